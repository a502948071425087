"""The study: ``python -m eval demo`` runs the whole method end to end (data, teacher, training, eval, report).

Orchestration only: it drives the other packages' commands. Nothing in ``eval``'s runtime modules
(score, run, report, compare, plots, probes, groups) imports it.
"""
