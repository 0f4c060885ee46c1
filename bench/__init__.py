"""switchyard benchmarks: run all with `make bench` (python -m bench)."""
