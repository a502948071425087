"""Scoring, answer extraction, metrics per question type, probes and reports.

Imports nothing of ``train`` beyond its checkpoint loading function.
"""
