"""Reward functions usable as verl custom reward functions."""
