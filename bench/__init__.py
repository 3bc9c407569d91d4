"""Benchmarks. `python -m bench NAME` runs one, `python -m bench all` runs every one.

Each benchmark is a module `bench/<name>.py` with `run() -> list[dict]` whose
records are made with `bench.common.record`. Results go to bench/out/<name>.json.
"""
