"""The preference stage with every objective, reference strategy and KTO, on the tiny model.

Each objective must move the policy the right way on held-out pairs: the implicit reward
margin [log π(y_w) − log π(y_l)] − [log π_ref(y_w) − log π_ref(y_l)] becomes positive.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from alignlab.data.collate import collate_pairs
from alignlab.data.errors import DataError
from alignlab.data.formats import load_preferences
from alignlab.data.readers import write_jsonl
from alignlab.data.tokenize import tokenize_preferences
from alignlab.models import load_causal_lm, load_tokenizer
from alignlab.ops import sequence_logps, token_logps
from test_stages import FAST, LN2, base_model, data_dir, dpo, preference_records, run_stage, train_lines  # noqa: F401

FAMILY = {
    "robust": {"loss": "robust", "label_smoothing": 0.1},
    "hinge": {"loss": "hinge"},
    "ipo": {"loss": "ipo", "tau": 0.5},
    "ipo_mean": {"loss": "ipo", "tau": 0.5, "ipo_length_normalize": True},
    "simpo": {"loss": "simpo"},
    "orpo": {"loss": "orpo"},
    "rpo": {"loss": [{"name": "sigmoid"}, {"name": "nll", "weight": 1.0}]},
    "apo_zero": {"loss": "apo_zero"},
    "apo_down": {"loss": "apo_down"},
}


def test_every_registered_objective_has_an_end_to_end_run_here():
    """A new objective's registry line is not done until it learns a preference in this file
    (sigmoid is the plain DPO of test_stages; nll alone learns no preference, it is RPO's half)."""
    from alignlab.losses.preference import OBJECTIVES

    used = {c["loss"] for c in FAMILY.values() if isinstance(c["loss"], str)}
    used |= {t["name"] for c in FAMILY.values() if isinstance(c["loss"], list) for t in c["loss"]}
    assert set(OBJECTIVES) - used <= {"sigmoid"}


@torch.no_grad()
def held_out_margin(model_dir, ref_dir, data) -> float:
    tokenizer = load_tokenizer(ref_dir)
    pairs, _ = tokenize_preferences(load_preferences(data), tokenizer, 64, 32)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)

    def margins(path):
        model = load_causal_lm(path).eval()
        seq = sequence_logps(*token_logps(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"]))
        return seq[: len(pairs)] - seq[len(pairs):]

    return (margins(model_dir) - margins(ref_dir)).mean().item()


@pytest.mark.parametrize("name", list(FAMILY))
def test_every_objective_learns_the_held_out_preference(name, base_model, data_dir, tmp_path):
    out = tmp_path / name
    metrics = dpo(base_model, data_dir, out, steps=12, **FAMILY[name])
    log = train_lines(out)
    assert all(math.isfinite(x["loss"]) for x in log)
    assert log[-1]["loss"] < log[0]["loss"]
    assert held_out_margin(out / "model", base_model, data_dir / "pairs_eval.jsonl") > 0.1
    assert math.isfinite(metrics["eval"]["loss"])


@pytest.mark.parametrize("name", ["simpo", "orpo"])
def test_reference_free_objectives_load_no_reference(name, base_model, data_dir, tmp_path, monkeypatch):
    from alignlab.models import FrozenCopy

    def forbidden(*args, **kwargs):
        raise AssertionError("a reference-free objective must not load a reference")

    monkeypatch.setattr(FrozenCopy, "from_pretrained", forbidden)
    metrics = dpo(base_model, data_dir, tmp_path / name, steps=2, **FAMILY[name])
    assert metrics["reference"] == "none" and not (tmp_path / name / "cache").exists()


def test_tr_dpo_hard_sync_makes_the_reference_the_policy(base_model, data_dir, tmp_path):
    out = tmp_path / "tr"
    dpo(base_model, data_dir, out, steps=5, ref_mode="live", ref_sync={"every": 2, "alpha": 1.0},
        train={**FAST, "lr": 5e-3, "batch_size": 8, "max_steps": 5, "save_every": 2, "keep_checkpoints": True})
    log = train_lines(out)
    # α = 1 copies the policy into the reference after steps 2 and 4, so the loss of the next
    # step is taken at policy == reference: exactly ln 2 again
    assert abs(log[0]["loss"] - LN2) < 1e-5
    assert abs(log[1]["loss"] - LN2) > 1e-3
    assert abs(log[2]["loss"] - LN2) < 1e-5 and abs(log[4]["loss"] - LN2) < 1e-5
    ckpt = sorted((out / "checkpoints").glob("step-*"))[-1]
    assert (ckpt / "reference.safetensors").exists()  # a resume restores the synced reference


def test_bad_preference_settings_fail_before_training(base_model, data_dir, tmp_path):
    with pytest.raises(ValidationError, match="sigmoid"):
        dpo(base_model, data_dir, tmp_path / "a", loss="dpoo")
    with pytest.raises(ValidationError, match="ref_mode: live"):
        dpo(base_model, data_dir, tmp_path / "b", ref_sync={"every": 2})
    with pytest.raises(ValidationError, match="need a reference"):
        dpo(base_model, data_dir, tmp_path / "c", loss="sigmoid", ref_mode="none")
    with pytest.raises(ValueError, match="soft labels"):
        dpo(base_model, data_dir, tmp_path / "d", loss="ipo", data=str(data_dir / "soft_pairs.jsonl"))
    assert not any((tmp_path / x).exists() for x in "abcd")


def _unpaired(path, records):
    rows = []
    for r in records:
        rows += [{"prompt": r["prompt"], "completion": r["chosen"], "label": True},
                 {"prompt": r["prompt"], "completion": r["rejected"], "label": False}]
    write_jsonl(path, rows)
    return str(path)


def test_kto_learns_from_unpaired_labels(base_model, data_dir, tmp_path):
    from test_stages import PROMPTS

    data = _unpaired(tmp_path / "kto.jsonl", preference_records(PROMPTS) + preference_records(PROMPTS, shift=1))
    out = tmp_path / "kto"
    metrics = run_stage("kto", out, model=base_model, data=data, max_length=64, max_prompt_length=32,
                        train={**FAST, "lr": 5e-3, "batch_size": 8, "max_steps": 12})
    log = train_lines(out)
    assert log[0]["desirable_reward"] == pytest.approx(0, abs=1e-5)  # policy == reference at step 1
    gap = [x["desirable_reward"] - x["undesirable_reward"] for x in log]
    assert gap[-1] > gap[0] + 0.2
    assert metrics["desirable"] == metrics["examples"] // 2
    assert held_out_margin(out / "model", base_model, data_dir / "pairs_eval.jsonl") > 0.1


def test_kto_update_does_not_depend_on_the_micro_batch_size(base_model, data_dir, tmp_path):
    # z₀ is estimated once per optimizer step over the whole batch, so cutting the step into
    # micro-batches of 2 must give the weights of one micro-batch of 8 (with a per-micro-batch
    # z₀ it would not: each estimate would come from other mismatched pairs).
    from safetensors.torch import load_file
    from test_stages import PROMPTS

    data = _unpaired(tmp_path / "kto.jsonl", preference_records(PROMPTS) + preference_records(PROMPTS, shift=1))
    ends, logs = {}, {}
    for micro in (8, 2):
        out = tmp_path / f"micro{micro}"
        run_stage("kto", out, model=base_model, data=data, max_length=64, max_prompt_length=32,
                  train={**FAST, "lr": 0.5, "adam_eps": 1.0, "max_grad_norm": None, "batch_size": 8,
                         "micro_batch_size": micro, "max_steps": 4})
        ends[micro] = load_file(str(out / "model" / "model.safetensors"))
        logs[micro] = train_lines(out)
    start = load_file(str(Path(base_model) / "model.safetensors"))
    moved = max((ends[8][k] - start[k]).abs().max().item() for k in start)
    assert max((ends[8][k] - ends[2][k]).abs().max().item() for k in ends[8]) <= 1e-3 * moved, moved
    # z₀ moves off 0 once the policy has left the reference, identically in both layouts
    z0 = [x["reference_point"] for x in logs[8]]
    assert z0 == pytest.approx([x["reference_point"] for x in logs[2]], abs=1e-6) and max(z0) > 0


def test_kto_refuses_paired_data_unless_asked_to_unpair(base_model, data_dir, tmp_path):
    with pytest.raises(DataError, match="unpair"):
        run_stage("kto", tmp_path / "a", model=base_model, data=str(data_dir / "pairs.jsonl"), max_length=64,
                  max_prompt_length=32, train={**FAST, "max_steps": 1})
    assert not (tmp_path / "a").exists()
    metrics = run_stage("kto", tmp_path / "b", model=base_model, data=str(data_dir / "pairs.jsonl"), unpair=True,
                        max_length=64, max_prompt_length=32, train={**FAST, "batch_size": 8, "max_steps": 1})
    assert metrics["examples"] == 2 * len(load_preferences(data_dir / "pairs.jsonl"))
