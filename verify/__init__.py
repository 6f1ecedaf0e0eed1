"""Numerical verification of the paper's guarantees: ``python -m verify.theory``."""
