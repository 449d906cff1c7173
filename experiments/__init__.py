"""Experiment configs (ml_collections) and the entry point ``python -m experiments.run``."""
