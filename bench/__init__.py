"""Benchmark harness of fastln; run it with ``python -m bench --help``."""
