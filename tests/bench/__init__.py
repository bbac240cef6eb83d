"""Benchmarks and fault runs: each script runs on its own (`python tests/bench/<name>.py`); not collected by pytest."""
