"""recipes/constitutional.yaml end to end, with the feedback model behind a real OpenAI-compatible
HTTP server on loopback (alignlab's own server over the recipe's SFT model), at test sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny_recipe import merge_settings

from alignlab.pipeline.runner import run_recipe

RECIPE = Path(__file__).parent.parent / "recipes" / "constitutional.yaml"
SMALL = {  # the recipe's stages at test sizes; everything else is the recipe as shipped
    "task": {"sft_size": 200, "train_prompts": 12, "test_prompts": 6},
    "pretrain": {"corpus_size": 600, "hidden_size": 32, "num_layers": 1, "train": {"max_steps": 6}},
    "sft": {"train": {"max_steps": 4}},
    "sl_cai": {"sampling": {"max_new_tokens": 10}, "generation": {"max_tokens": 10}, "batch_size": 4},
    "sft_cai": {"train": {"max_steps": 2}},
    "ai_labels": {"sampling": {"max_new_tokens": 10}, "batch_size": 4},
    "reward_model": {"train": {"max_steps": 2}},
    "dpo": {"train": {"max_steps": 2}},
    "evaluate": {"sampling": {"max_new_tokens": 10}},
}


def _write(tmp_path, feedback: dict | None) -> Path:
    recipe = yaml.safe_load(RECIPE.read_text())
    for stage, extra in SMALL.items():
        recipe["stages"][stage] = merge_settings(recipe["stages"][stage], extra)
    if feedback is not None:
        for stage in ("sl_cai", "ai_labels"):
            recipe["stages"][stage]["feedback"] = feedback
    path = tmp_path / "constitutional.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from alignlab.feedback.ai.llm.local import LocalLLM
    from alignlab.feedback.ai.llm.server import make_app, start_in_thread

    tmp = tmp_path_factory.mktemp("cai")
    out = tmp / "run"
    run_recipe(_write(tmp, None), out, until="sft")  # the model the server will serve
    app = make_app(LocalLLM(str(out / "sft" / "model")), model_name="tiny-feedback")
    seen: list[str] = []

    async def counting(scope, receive, send):  # every request that reaches the server
        if scope["type"] == "http":
            seen.append(scope["path"])
        await app(scope, receive, send)

    base_url, stop = start_in_thread(counting)
    try:
        feedback = {"type": "openai", "base_url": base_url, "model": "tiny-feedback", "api_key_env": None}
        run_recipe(_write(tmp, feedback), out)
    finally:
        stop()
    return out, seen


def test_the_feedback_went_through_the_http_server(run_dir):
    out, seen = run_dir
    assert seen.count("/v1/completions") >= 12  # critiques, revisions and the (A)/(B) log-prob queries
    chains = [json.loads(x) for x in (out / "sl_cai" / "data" / "chains.jsonl").read_text().splitlines()]
    assert len(chains) == 12 and all(c["rounds"] for c in chains)


def test_ai_labels_are_soft_and_come_from_log_probs(run_dir):
    out, _ = run_dir
    rows = [json.loads(x) for x in (out / "ai_labels" / "data" / "preferences.jsonl").read_text().splitlines()]
    assert rows and all(0.5 <= r["label"] < 1 for r in rows)
    assert any(r["label"] > 0.5 for r in rows)
    details = [json.loads(x) for x in (out / "ai_labels" / "data" / "labels.jsonl").read_text().splitlines()]
    assert all(0 < d["p_a"] < 1 for d in details if d.get("p_a") is not None)


def test_every_stage_finished_and_the_labels_trained_models(run_dir):
    out, _ = run_dir
    for stage in ("sl_cai", "sft_cai", "ai_labels", "reward_model", "dpo", "evaluate"):
        assert (out / stage / "done.json").exists(), stage
    models = json.loads((out / "evaluate" / "metrics.json").read_text())["models"]
    assert set(models) == {"sft", "sft_cai", "dpo"}
