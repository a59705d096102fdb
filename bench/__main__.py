"""The benchmark suite, one command:

    make bench                         # = .venv/bin/python -m bench
    .venv/bin/python -m bench --small  # tiny sizes: checks that every benchmark still works
    .venv/bin/python -m bench --only engine scale

Each benchmark runs as its own process (one at a time: the machine is small and shared) and
writes its JSON under bench/results/; then bench/results/summary.png charts the latest figures.
See bench/README.md for the method and the figures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench.harness import RESULTS, ROOT

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
            str(RESULTS / "subscription_latency_small.json"),
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
    args = parser.parse_args()
    failed = []
    for name in args.only or list(BENCHMARKS):
        full, small = BENCHMARKS[name]
        argv = [sys.executable, "-m", f"bench.{name}", *(small if args.small else full)]
        print(f"=== {name}: {' '.join(argv[1:])}", flush=True)
        began = time.monotonic()
        code = subprocess.call(argv, cwd=ROOT)
        print(f"=== {name}: exit {code} after {time.monotonic() - began:.0f} s\n", flush=True)
        if code:
            failed.append(name)
    if not args.small:
        from bench.chart import draw

        print(f"chart: {draw()}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
