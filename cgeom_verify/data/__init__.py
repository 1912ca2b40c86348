"""Data shipped with the harness (package data, read with :mod:`importlib.resources`)."""
