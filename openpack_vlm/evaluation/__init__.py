"""Evaluation: metrics and the base-vs-fine-tuned evaluation behind evaluate.py."""
