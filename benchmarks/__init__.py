"""Bench-only helpers for ``benchmarks/bench.py``: the workload, timing and statistics, the
model variants, the HTTP load generator and the report. Nothing here runs at import."""
