"""Benchmark scripts: each runs as ``python benchmarks/<name>.py`` and imports as a module."""
