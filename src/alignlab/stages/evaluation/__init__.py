"""Evaluation stages: what alignment did (gold/proxy reward, KL, win rate, best-of-N, search, frontier, report)."""
