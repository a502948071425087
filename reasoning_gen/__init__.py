"""Offline reasoning generation (ReasVQA chains, vCoT transitional captions) and refinement.

Must not import ``train``.
"""
