"""Pretrain a small LM from scratch: train a BPE tokenizer on the corpus, then next-token training.

For the built-in tasks (their corpus is generated locally) and for anyone who wants a tiny base
model of their own text; real users start from a hub model instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from alignlab.data.errors import Source
from alignlab.data.examples import SFTExample
from alignlab.data.formats import load_sft
from alignlab.data.tokenize import tokenize_sft
from alignlab.models.build import new_causal_lm, train_bpe_tokenizer
from alignlab.stages.common import (
    StageConfig,
    config_hash,
    finish,
    runtime,
    save_trained_model,
    seed_everything,
)
from alignlab.stages.offline.sft import sft_step_fns
from alignlab.tasks import TaskSpec, get_task, task_name
from alignlab.train import TrainSettings, train


class PretrainConfig(StageConfig):
    task: TaskSpec | None = Field(None, description="built-in task whose corpus to generate")
    data: str | None = Field(None, description="or a text dataset (records with `text`)")
    corpus_size: int = Field(20000, gt=0)
    vocab_size: int = Field(1024, ge=300)
    arch: Literal["gpt2", "llama", "qwen2"] = "gpt2"
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    max_length: int = 96
    train: TrainSettings = TrainSettings(lr=2e-3, batch_size=32, warmup_ratio=0.05, schedule="cosine")

    @model_validator(mode="after")
    def _one_source(self) -> "PretrainConfig":
        if (self.task is None) == (self.data is None):
            raise ValueError("give exactly one of `task` or `data`")
        return self


def _corpus(cfg: PretrainConfig) -> list[SFTExample]:
    if cfg.data:
        return load_sft(cfg.data)
    texts = get_task(cfg.task).corpus(cfg.corpus_size, seed=cfg.train.seed)
    src = f"<task {task_name(cfg.task)} corpus>"
    return [SFTExample(prompt="", completion=t, source=Source(src, i + 1, "row")) for i, t in enumerate(texts)]


def run(cfg: PretrainConfig, out: Path) -> dict:
    examples = _corpus(cfg)
    seed_everything(cfg.train.seed)
    tokenizer = train_bpe_tokenizer((e.completion for e in examples), vocab_size=cfg.vocab_size)
    rows, stats = tokenize_sft(examples, tokenizer, cfg.max_length, max_prompt_length=cfg.max_length)
    device, dist = runtime(cfg.train.device)
    model = new_causal_lm(
        tokenizer, arch=cfg.arch, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
        num_heads=cfg.num_heads, max_positions=max(cfg.max_length, 256), seed=cfg.train.seed,
    ).to(device)
    out.mkdir(parents=True, exist_ok=True)
    result = train(
        model, [len(r) for r in rows], sft_step_fns(rows, tokenizer.pad_token_id), cfg.train, out,
        device=device, dist=dist, data_key=config_hash(cfg), name="pretrain",
    )
    save_trained_model(model, tokenizer, out / "model", dist)
    return finish(out, cfg, {"data": stats, "parameters": model.num_parameters(), **result}, dist)
