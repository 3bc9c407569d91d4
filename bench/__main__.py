"""Run benchmarks: python -m bench [all|control|gossip|dataplane|integrations|infra|ha|security|scale].

`all` runs every benchmark but `scale` (meshd at 5,000 agents and over three replicas, about 17
minutes on 2 cores), which runs only when named."""

from __future__ import annotations

import importlib
import sys
import time

from bench.common import discard, show, write

ALL = ["control", "gossip", "dataplane", "integrations", "infra", "ha", "security"]
ON_REQUEST = ["scale"]


def main(argv: list[str]) -> int:
    names = ALL if not argv or argv[0] == "all" else argv[0].split(",")
    unknown = [n for n in names if n not in ALL + ON_REQUEST]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}: choose from {', '.join(ALL + ON_REQUEST)} or all",
              file=sys.stderr)
        return 2
    failed = []
    for name in names:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"bench.{name}":
                print(f"== {name}: not built yet")
                continue
            raise
        print(f"== {name}")
        discard(name)  # a run that fails must not leave the previous run's figures behind
        t0 = time.monotonic()
        try:
            records = module.run()
        except Exception as e:  # a benchmark failing must not hide the others' results
            import traceback
            traceback.print_exc()
            print(f"{name} failed: {type(e).__name__}: {e}", file=sys.stderr)
            failed.append(name)
            continue
        path = write(name, records)
        show(records)
        from bench.plots import draw
        for png in draw(name):
            print(f"   plot -> {png}")
        print(f"-- {name}: {len(records)} records in {time.monotonic() - t0:.1f}s -> {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
