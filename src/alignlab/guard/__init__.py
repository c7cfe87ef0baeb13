"""Constitutional classifiers (after Sharma et al. 2025) and the guard they make around sampling.

- `constitution`: what is restricted and what is allowed (harmless look-alikes included), in YAML;
- `synthesis`: how a generator LLM is asked for labelled prompts and responses, and what is kept;
- `models`: the input classifier (a sequence classifier on the prompt) and the streaming output
  classifier (a token classifier: a score after every response token), on a causal-LM backbone;
- `streaming` and `sampler`: the guard: flagged prompts are refused, and generation stops at the
  first token the output classifier flags, scored as tokens are produced;
- `curve` and `plot`: block rate against false-positive rate over the threshold, the operating point.

The stages are `classifier_data`, `classifier` (role input / output) and `classifier_eval`; the
`safety_eval` stage samples behind a guard with `guard:` (`settings.GuardSettings`).
"""
