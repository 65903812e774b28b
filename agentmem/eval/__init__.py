"""Benchmarks, each runnable as `python -m agentmem.eval.<name>`; results go to BENCHMARKS.md."""
