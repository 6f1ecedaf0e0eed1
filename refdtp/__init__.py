"""refdtp: a reference implementation of Difference Target Propagation.

L-DRL (Ernoult et al., ICML 2022, arXiv 2201.13415) and its baselines, written
by hand in NumPy (CPU) and CuPy (GPU). See README.md for the map from the
paper's symbols to the code's names.
"""
__version__ = "0.1.0"
