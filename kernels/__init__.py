"""Triton kernels of scan-fast, installed as `scan_fast.kernels`.

Importing this package needs Triton; `scan_fast.ops` imports it lazily and only
for CUDA tensors, so CPU users never pay for it.
"""
