"""Experiment machinery, one module per theorem sheet of the package (the floor below it)."""
