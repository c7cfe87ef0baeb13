"""Feedback, in three wings (`ai` may use `rewards`; `human` uses neither):

- `rewards`: reward sources for online RL (reward model, gold task scorer, user function, rule terms, PRM);
- `ai`: AI feedback (constitution, LLM backends and server, SL-CAI, RLAIF labels, model judges);
- `human`: human feedback (the labelling app, people's labels as a judge, hybrid AI/human routing).

`judgement.py` is the pairwise-judge protocol every judge answers to.
"""
