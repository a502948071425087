"""Triton kernels with autograd, their pure-PyTorch references, attention backend choice, benchmarks.

Public API (contract 6)::

    from vqa_kernels import weighted_cross_entropy, fused_linear_weighted_cross_entropy
    from vqa_kernels import LinearWeightedCrossEntropy, backend
    from vqa_kernels.attention import select_attention

``backend(device)`` says which implementation a call on that device runs ("triton",
"triton-interpret" or "torch-chunked"); the choice is logged once.  Read in this order:
``cross_entropy.py`` (the Triton kernel and its host functions), ``reference.py`` (eager and
chunked torch, the torch twins of those host functions), ``fused_linear_cross_entropy.py`` (the
chunk driver), ``autograd.py`` (one autograd Function per op, shared by both backends),
``functional.py`` / ``module.py`` (the API), ``bench.py``.

Imports nothing of the project but itself (and no triton until a call needs it).
"""

from vqa_kernels._backend import backend
from vqa_kernels.functional import fused_linear_weighted_cross_entropy, weighted_cross_entropy
from vqa_kernels.module import LinearWeightedCrossEntropy

__all__ = [
    "LinearWeightedCrossEntropy",
    "backend",
    "fused_linear_weighted_cross_entropy",
    "weighted_cross_entropy",
]
