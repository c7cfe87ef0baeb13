"""How far to trust AI labels: agreement with pairs whose better response is known.

The known pairs (preference records: `chosen` is the better one) are put to the feedback model
exactly as the real pairs are, the known-better response shown first in every other pair, so a
model that only ever answers "A" scores 50% whether its labels are debiased or not. Reported:
`agreement` (the debiased label picks the known-better response), `agreement_one_order` (what one
question with the responses in a single order would give: the first principle's first order), the
position bias in both scales and the orders' consistency (see `labels`); contrast labels
(`contrast_labels`) score each response alone, so their order figures are None and their bias 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignlab.data.examples import PreferenceExample
from alignlab.feedback.ai.labels import Pair, label_metrics


def known_pairs(examples: Sequence[PreferenceExample]) -> tuple[list[Pair], list[bool]]:
    """Pairs to label and, for each, whether its response_a is the known-better one (every other)."""
    pairs, a_better = [], []
    for i, ex in enumerate(examples):
        first = i % 2 == 0
        pairs.append(Pair(i, ex.prompt, ex.chosen if first else ex.rejected, ex.rejected if first else ex.chosen))
        a_better.append(first)
    return pairs, a_better


def check_figures(records: Sequence[dict], a_better: Sequence[bool]) -> dict:
    """Agreement with the known answers over the pairs that got a label, and the label metrics."""
    scored = [(r, truth) for r, truth in zip(records, a_better) if not r.get("skipped") and not r.get("error")]
    n = max(len(scored), 1)
    agree = sum((r["p_a"] > 0.5) == truth for r, truth in scored if r["p_a"] != 0.5)
    ordered = all("p_first" in r["principles"][0] for r, _ in scored)  # contrast labels have no order
    one_order = sum((r["principles"][0]["p_first"][0] > 0.5) == truth for r, truth in scored) if ordered else None
    metrics = label_metrics(records)
    return {"pairs": len(records), "labelled": len(scored), "agreement": agree / n,
            "agreement_one_order": None if one_order is None else one_order / n,
            **{k: metrics[k] for k in ("mean_confidence", "mean_position_bias", "mean_position_bias_logit",
                                       "order_agreement", "order_consistency", "llm_errors")}}
