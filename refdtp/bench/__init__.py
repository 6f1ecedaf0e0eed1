"""Benchmarks: ``python -m refdtp.bench`` (see __main__.py) and FLOP counts (flops.py)."""
