"""Human labelling: a local web app where people judge pairs (A/B, tie, skip) and rank K responses.

    alignlab label tokens DB --add NAME      a labeller and their token (printed once, stored hashed)
    alignlab label serve DATA [--db DB]      the app; labellers open http://HOST:PORT/login?token=...
    alignlab label export DB --out FILE      a preference (or --format rankings) dataset

Modules: `items` (reading DATA), `tokens`, `answers` (answers and the per-labeller shuffle),
`store` (SQLite, WAL, one label per labeller and item), `app` (the web app), `export`, `cli`.
"""

from alignlab.feedback.human.labelling.answers import (
    Answer,
    answer_from_display,
    display_order,
)
from alignlab.feedback.human.labelling.export import (
    comparisons,
    export_preferences,
    export_rankings,
    preference_rows,
    ranking_rows,
)
from alignlab.feedback.human.labelling.items import (
    LabelItem,
    item_from_record,
    load_label_items,
)
from alignlab.feedback.human.labelling.store import (
    LabelConflict,
    Labeller,
    LabellerInfo,
    LabelRecord,
    LabelStore,
    Progress,
    UnknownItem,
)
from alignlab.feedback.human.labelling.tokens import hash_token, new_token, read_token_file

__all__ = [
    "Answer",
    "LabelConflict",
    "LabelItem",
    "LabelRecord",
    "LabelStore",
    "Labeller",
    "LabellerInfo",
    "Progress",
    "UnknownItem",
    "answer_from_display",
    "comparisons",
    "display_order",
    "export_preferences",
    "export_rankings",
    "hash_token",
    "item_from_record",
    "load_label_items",
    "new_token",
    "preference_rows",
    "ranking_rows",
    "read_token_file",
]
