"""Benchmarks: ``python -m benchmarks.train_step``, ``python -m benchmarks.reconstruction``."""
