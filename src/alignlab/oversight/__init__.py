"""Scalable oversight: can a weak judge, helped by strong models it cannot fully check, get the answer right?

- `steps`: what a sparse judge sees of an arithmetic solution (one step) and what checking it means;
- `checkers`: the judge's one-line arithmetic checker, exact or a small LLM;
- `debaters`: LLM debaters on arithmetic: their solutions and the steps they reveal;
- `debate`: debate with a sparse judge (Irving et al. 2018) against consultancy and the judge alone;
- `sandwich`, `pairs`: sandwiching (Bowman et al. 2022) on arithmetic and on preference pairs;
- `stats`, `report`: accuracies with Wilson intervals, paired gains, a table and a bar chart.

The stages `debate` and `sandwich` (`alignlab.stages.evaluation`) run these on a recipe's models;
every backend is an `LLMBackend`, so a local transformers model and an OpenAI-compatible server
take the same places.
"""
