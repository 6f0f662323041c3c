"""snapctl benchmarks: scripts that print a table. Run ``python -m bench.run`` (see docs/benchmarks.md)."""
