"""Benchmark tooling: the driver (``python -m bench.run``), private servers, the Node reference."""
