"""Trained weights shipped with the gateway (data files; see docs/classifier.md)."""
