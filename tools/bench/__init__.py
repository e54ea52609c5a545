"""Benchmarks: one command each, python -m fognode.tools.bench.<name>."""
