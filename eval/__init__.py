"""Scoring, answer extraction, metrics per question type, probes and reports.

Imports run one way: ``stats`` < ``compare``, ``plots`` < ``report``; ``groups`` < ``score``;
``probes``, ``score`` < ``run``. :mod:`eval.study` (the demo's orchestration) sits on top and no
runtime module imports it. Imports nothing of ``train`` beyond its checkpoint loading function
(``train.export.load_for_eval``, in :mod:`eval.run`).
"""
