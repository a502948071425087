"""Triton kernels with autograd and their pure-PyTorch references.

Imports nothing of the project but itself.
"""
