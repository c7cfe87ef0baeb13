"""Feedback, in three wings that do not import one another upward:

- `rewards`: reward sources for online RL (reward model, gold task scorer, user function, rule terms, PRM);
- `ai`: AI feedback (constitution, LLM backends and server, SL-CAI, RLAIF labels, judges);
- `human`: human feedback (the labelling app, hybrid AI/human routing).
"""
