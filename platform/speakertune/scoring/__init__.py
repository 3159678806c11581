"""Scoring: embedding extraction, backends (cosine, PLDA, AS-norm), metrics, plots, evaluation."""
