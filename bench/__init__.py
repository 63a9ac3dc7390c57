"""Benchmarks of cad-node against real references (scripts, not tests; see bench/README.md)."""
