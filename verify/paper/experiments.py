"""Imports every experiment module, which registers its experiments."""
from . import budget, lenet_angles, routing  # noqa: F401
