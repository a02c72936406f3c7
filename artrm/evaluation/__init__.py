"""Scoring params on fixed evaluation sets: decoding, answer metrics, evaluators."""
