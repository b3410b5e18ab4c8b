"""Evaluation: metrics (one small module each), feature extractors, reference statistics and
the in-loop evaluator."""
