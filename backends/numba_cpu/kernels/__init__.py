"""Numba helpers the generated code calls (through thunks), and the generated micro-kernels."""
