"""Fitting the learned classifier on labelled traffic (``python -m gateway train``).

Offline only: numpy (and matplotlib for the report's plot) are needed here, never by the
running gateway, which reads the weights these modules write with pure Python.
"""
