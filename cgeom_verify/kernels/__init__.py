"""Numerical kernels shared by all claims: one implementation of each."""
