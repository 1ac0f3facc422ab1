"""Numba kernels: plain functions over NumPy arrays that write into buffers they are given.

Nothing here validates its input; the layers in :mod:`nlstm` do that before calling.
"""
