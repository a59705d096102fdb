"""summary.png beside a run's results: the figures of every benchmark that has results, one panel each.

python -m bench.chart [RESULTS_DIR]     # default: bench/results (the published figures)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.harness import PUBLISHED


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _latency(side: dict[str, Any]) -> dict[str, float]:
    lat = side["schedulingLatencyMs"]
    return lat.get("toStartedOneAtATime", lat["toStarted"])


def draw(results: Path = PUBLISHED) -> Path:
    path = results / "summary.png"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (throughput, latency), (api, subscriptions) = axes

    engine = _load(results, "engine")
    if engine:
        cases = [(db, shape) for db, on in engine["databases"].items() for shape in on["shapes"]]
        by_case = {(db, shape): engine["databases"][db]["shapes"][shape] for db, shape in cases}
        labels = [f"{shape}\n{db}" for db, shape in cases]
        x = range(len(cases))
        ours = [by_case[c]["ours"]["activitiesPerSecond"] for c in cases]
        hand = [by_case[c]["handwritten"]["activitiesPerSecond"] for c in cases]
        throughput.bar([i - 0.2 for i in x], ours, 0.4, label="ours (API + interpreter)")
        throughput.bar([i + 0.2 for i in x], hand, 0.4, label="hand-written workflow")
        for i, c in enumerate(cases):
            throughput.annotate(
                f"ratio {by_case[c]['ratio']}",
                (i, max(ours[i], hand[i])),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        throughput.set_xticks(list(x), labels, fontsize=8)
        throughput.set_ylabel("activities / s")
        throughput.set_title("Engine throughput (same server, one worker each)")
        throughput.legend()

        labels, ours_lat, hand_lat = [], [], []
        for c in cases:
            for q in ("p50", "p99"):
                labels.append(f"{c[1]} {'SQLite' if c[0] == 'sqlite' else 'PG'} {q}")
                ours_lat.append(_latency(by_case[c]["ours"])[q])
                hand_lat.append(_latency(by_case[c]["handwritten"])[q])
        x = range(len(labels))
        latency.bar([i - 0.2 for i in x], ours_lat, 0.4, label="ours")
        latency.bar([i + 0.2 for i in x], hand_lat, 0.4, label="hand-written")
        latency.set_xticks(list(x), labels, fontsize=7, rotation=60, ha="right")
        latency.set_ylabel("ms")
        latency.set_title("Scheduling latency, one execution at a time (ms)")
        latency.legend()

    load = _load(results, "api_load")
    if load:
        databases = [d for d in load.get("databases", {})]
        endpoints = sorted({e for d in databases for e in load["databases"][d]["endpoints"]})
        width = 0.8 / max(1, len(databases))
        for j, database in enumerate(databases):
            values = [load["databases"][database]["endpoints"].get(e, {}).get("rps", 0) for e in endpoints]
            api.bar([i + j * width for i in range(len(endpoints))], values, width, label=database)
        api.set_xticks(
            [i + width * (len(databases) - 1) / 2 for i in range(len(endpoints))], endpoints, fontsize=8
        )
        api.set_ylabel("requests / s")
        api.set_title("API under concurrent load")
        api.legend()

    subs = _load(results, "subscription_latency")
    if subs:
        cases = subs["results"]
        labels = [f"{c['database']}\n{c['subscribers']} sub" for c in cases]
        x = range(len(cases))
        subscriptions.bar([i - 0.2 for i in x], [c["p50_ms"] for c in cases], 0.4, label="p50")
        subscriptions.bar([i + 0.2 for i in x], [c["p99_ms"] for c in cases], 0.4, label="p99")
        subscriptions.set_xticks(list(x), labels)
        subscriptions.set_ylabel("ms")
        subscriptions.set_title("Subscription latency: event committed -> client received")
        subscriptions.legend()

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    import sys

    print(draw(Path(sys.argv[1]) if len(sys.argv) > 1 else PUBLISHED))
