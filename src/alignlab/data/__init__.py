"""Data: read files, normalise examples, render chat templates, tokenize with loss masks, batch.

Files → `read_records` → `load_sft` / `load_preferences` / `load_prompts` (validated examples)
→ `tokenize_sft` / `tokenize_preferences` / `tokenize_prompts` (ids + loss masks)
→ `length_grouped_batches` + `pad_rows` / `collate_pairs` (tensors).
"""

from alignlab.data.collate import collate_pairs, length_grouped_batches, pad_rows, padding_waste
from alignlab.data.errors import DataError, DataFileNotFoundError, Source
from alignlab.data.examples import ROLES, PreferenceExample, PromptExample, SFTExample
from alignlab.data.formats import (
    load_preferences,
    load_prompts,
    load_sft,
    parse_prompt_record,
    parse_sft_record,
    preferences_from_records,
    prompts_from_records,
    sft_from_records,
)
from alignlab.data.preference_records import parse_preference_record
from alignlab.data.readers import read_records, write_jsonl
from alignlab.data.templates import DEFAULT_CHAT_TEMPLATE, chat_template_of, render_completion, render_prompt
from alignlab.data.tokenize import (
    TokenizedRow,
    tokenize_example,
    tokenize_preferences,
    tokenize_prompts,
    tokenize_sft,
)

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "ROLES",
    "DataError",
    "DataFileNotFoundError",
    "PreferenceExample",
    "PromptExample",
    "SFTExample",
    "Source",
    "TokenizedRow",
    "chat_template_of",
    "collate_pairs",
    "length_grouped_batches",
    "load_preferences",
    "load_prompts",
    "load_sft",
    "pad_rows",
    "padding_waste",
    "parse_preference_record",
    "parse_prompt_record",
    "parse_sft_record",
    "preferences_from_records",
    "prompts_from_records",
    "read_records",
    "render_completion",
    "render_prompt",
    "sft_from_records",
    "tokenize_example",
    "tokenize_preferences",
    "tokenize_prompts",
    "tokenize_sft",
    "write_jsonl",
]
