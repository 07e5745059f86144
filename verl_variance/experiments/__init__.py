"""Experiments: the quick-start run (and, later, the bandit simulator and the IMDB study)."""
