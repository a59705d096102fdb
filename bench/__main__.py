"""The benchmark suite, one command:

    make bench                         # = .venv/bin/python -m bench (installs the bench extra first)
    .venv/bin/python -m bench --small  # tiny sizes: checks that every benchmark still works
    .venv/bin/python -m bench --only engine scale
    .venv/bin/python -m bench --publish  # write the figures bench/README.md quotes (bench/results/)

Each benchmark runs as its own process (one at a time: the machine is small and shared) and
writes its JSON into one folder for the whole run, bench/runs/<UTC time>/ (not tracked), then
summary.png there charts them; with --publish the folder is bench/results/, the committed
figures. Calling `python -m bench` directly needs the bench extra (py-spy, matplotlib):
`.venv/bin/pip install -e '.[bench]'` (`make bench` does it). See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import PUBLISHED, RESULTS, ROOT

#: name -> (full-size arguments, small arguments)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "engine": ([], ["--small", "--rounds", "1"]),
    "breakdown": ([], ["--small", "--rounds", "1"]),
    "scale": ([], ["--small"]),
    "api_load": ([], ["--small"]),
    "subscription_latency": (
        [],
        [
            "--events",
            "20",
            "--subscribers",
            "1",
            "5",
            "--output",
            "{results}/subscription_latency_small.json",
        ],
    ),
    "profile": ([], ["--small"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="tiny sizes, results in *_small.json (CI)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument(
        "--publish", action="store_true", help="write into bench/results/ (committed figures)"
    )
    args = parser.parse_args()
    results: Path = PUBLISHED if args.publish else RESULTS
    env = os.environ | {"WFO_BENCH_RESULTS": str(results)}
    print(f"results: {results}", flush=True)
    failed = []
    for name in args.only or list(BENCHMARKS):
        full, small = BENCHMARKS[name]
        arguments = [a.format(results=results) for a in (small if args.small else full)]
        argv = [sys.executable, "-m", f"bench.{name}", *arguments]
        print(f"=== {name}: {' '.join(argv[1:])}", flush=True)
        began = time.monotonic()
        code = subprocess.call(argv, cwd=ROOT, env=env)
        print(f"=== {name}: exit {code} after {time.monotonic() - began:.0f} s\n", flush=True)
        if code:
            failed.append(name)
    if not args.small:
        from bench.chart import draw

        print(f"chart: {draw(results)}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
