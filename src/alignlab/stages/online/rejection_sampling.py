"""Iterative rejection-sampling fine-tuning: sample, keep the best, fine-tune on it, repeat.

Each round samples `samples_per_prompt` completions per prompt from the current policy, scores
them with the reward, keeps the best one per prompt (Touvron et al. 2023, Llama 2's "rejection
sampling"; Dong et al. 2023, RAFT) — or every sample at or above `min_reward` with
`keep: above_threshold` (the filter of Gulcehre et al. 2023, ReST) — and fine-tunes the policy on
the kept samples with the SFT loss. The next round samples from the fine-tuned policy.

The policy learns the sampled token ids themselves (EOS included when the sample stopped), not a
re-tokenisation of the decoded text, so it is trained on exactly what it produced.

Layout of the stage directory, one folder per round::

    round-<r>/data/selected.jsonl   the kept samples: prompt, completion, reward
    round-<r>/selection.json        the same as token ids, with the round's sampling figures
    round-<r>/checkpoints/, log.jsonl   the round's SFT (resumable like any training)
    round-<r>/model/                the policy after round r
    round-<r>/done.json             written (atomically) after the model: the round's figures;
                                    the round's checkpoints are deleted then
    model/                          the last round's model

A round with `done.json` is skipped on a rerun, and a round's selection is reused once written,
so a killed run resumes inside the round it was in: same samples, same checkpoints. A finished
round whose settings differ from the current ones (other than `rounds`, which may grow to go on)
is an error, not a silent reuse.

Round r's figures describe the samples of the policy round r *starts* from: "reward_mean_all" of
round r is the mean reward of the policy after round r−1.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from alignlab.data.readers import write_jsonl
from alignlab.data.tokenize import TokenizedRow
from alignlab.feedback.rewards import RewardSpec, ScoringBatch, build_reward, score_safely
from alignlab.models import load_tokenizer, resolve_max_length, save_pretrained_atomic
from alignlab.rollout import SamplingSettings, sample
from alignlab.search.select import pick_best
from alignlab.stages.blocks import PolicySettings, SeedSettings
from alignlab.stages.common import (
    DONE,
    file_fingerprint,
    finish,
    load_policy,
    read_json,
    runtime,
    seed_everything,
    write_json,
)
from alignlab.stages.online.common import PromptStream, iteration_seed, load_prompt_ids
from alignlab.stages.offline.sft import sft_step_fns
from alignlab.train import TrainSettings, train
from alignlab.train.distributed import Dist, barrier

SELECTION = "selection.json"
MAX_PROBLEMS_REPORTED = 20


class RejectionSamplingConfig(PolicySettings, SeedSettings):
    prompts: str
    reward: RewardSpec
    rounds: int = Field(3, ge=1)
    samples_per_prompt: int = Field(4, ge=1, description="N samples per prompt and round")
    prompts_per_round: int | None = Field(None, gt=0, description="default: every prompt each round")
    keep: Literal["best", "above_threshold"] = Field(
        "best", description="best: the best sample per prompt; above_threshold: every sample >= min_reward",
    )
    min_reward: float | None = Field(None, allow_inf_nan=False, description="keep nothing below this reward")
    sampling: SamplingSettings = SamplingSettings()
    on_reward_error: Literal["drop", "stop"] = Field("drop", description="a sample whose reward fails or is NaN")
    train: TrainSettings = TrainSettings(lr=1e-5, batch_size=16)

    @model_validator(mode="after")
    def _consistent(self) -> RejectionSamplingConfig:
        if self.keep == "above_threshold" and self.min_reward is None:
            raise ValueError("keep: above_threshold needs min_reward")
        if self.max_length is not None:  # checked again once an unset max_length is resolved
            check_completion_room(self.max_prompt_length, self.max_length)
        return self


def check_completion_room(max_prompt_length: int, max_length: int) -> None:
    if max_prompt_length >= max_length:
        raise ValueError(f"max_prompt_length ({max_prompt_length}) must be below max_length ({max_length}) "
                         "to leave room for the completion")


def select_samples(
    scores_per_prompt: Sequence[Sequence[float]], keep: str = "best", min_reward: float | None = None
) -> list[list[int]]:
    """Per prompt, the indices of the samples to train on.

    keep="best": the highest-scoring sample (see `pick_best`: a failed/NaN score never wins, ties
    go to the earlier sample), dropped when below `min_reward`. keep="above_threshold": every
    sample scoring at least `min_reward`, in order.
    """
    if keep == "best":
        picks = pick_best(scores_per_prompt, len(scores_per_prompt[0])) if scores_per_prompt else []
        return [[] if i is None or (min_reward is not None and scores[i] < min_reward) else [i]
                for scores, i in zip(scores_per_prompt, picks)]
    if keep == "above_threshold":
        if min_reward is None:
            raise ValueError("keep='above_threshold' needs min_reward")
        return [[i for i, s in enumerate(scores) if math.isfinite(s) and s >= min_reward] for scores in scores_per_prompt]
    raise ValueError(f"keep must be 'best' or 'above_threshold', got {keep!r}")


def settings_hash(cfg: RejectionSamplingConfig) -> str:
    """The settings a finished round depends on: everything but the number of rounds."""
    return hashlib.sha256(cfg.model_dump_json(exclude={"rounds"}).encode()).hexdigest()[:16]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def sample_and_select(cfg: RejectionSamplingConfig, policy, tokenizer, reward, prompt_texts: list[str],
                      prompt_ids: list[list[int]], seed: int) -> tuple[dict, list[dict]]:
    """One round's samples, scored and filtered: (selection with token ids and figures, selected records)."""
    k = cfg.samples_per_prompt
    rollouts = sample(policy, [ids for ids in prompt_ids for _ in range(k)], cfg.sampling,
                      pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id, seed=seed)
    completions = tokenizer.batch_decode(rollouts.completion_ids, skip_special_tokens=True)
    batch = ScoringBatch([t for t in prompt_texts for _ in range(k)], completions, rollouts.prompt_ids,
                         rollouts.completion_ids, rollouts.finished)
    result = score_safely(reward, batch, on_error=cfg.on_reward_error)
    scores = result.scores.tolist()
    per_prompt = [scores[p * k : (p + 1) * k] for p in range(len(prompt_ids))]
    kept_rows = [p * k + i for p, kept in enumerate(select_samples(per_prompt, cfg.keep, cfg.min_reward)) for i in kept]

    valid = [s for s in scores if math.isfinite(s)]
    selection = {
        "prompt_ids": [rollouts.prompt_ids[j] for j in kept_rows],
        "completion_ids": [rollouts.completion_ids[j] for j in kept_rows],
        "figures": {
            "prompts": len(prompt_ids),
            "samples": len(scores),
            "invalid_samples": result.num_invalid,
            "reward_mean_all": _mean(valid),
            "reward_mean_kept": _mean([scores[j] for j in kept_rows]),
            "kept": len(kept_rows),
            "prompts_with_a_kept_sample": len({j // k for j in kept_rows}),
            "kept_length_mean": _mean([float(len(rollouts.completion_ids[j])) for j in kept_rows]),
            "eos_rate": sum(rollouts.finished) / max(len(rollouts), 1),
        },
        "problems": result.problems[:MAX_PROBLEMS_REPORTED],
    }
    records = [{"prompt": batch.prompts[j], "completion": completions[j], "reward": scores[j]} for j in kept_rows]
    return selection, records


def training_rows(selection: dict, max_length: int) -> list[TokenizedRow]:
    """Prompt + sampled completion ids with the loss on the completion, cut to `max_length` tokens."""
    rows = []
    for prompt, completion in zip(selection["prompt_ids"], selection["completion_ids"]):
        completion = completion[: max_length - len(prompt)]
        rows.append(TokenizedRow(prompt + completion, [0] * len(prompt) + [1] * len(completion)))
    return rows


def copy_dir_atomic(src: Path, dst: Path) -> None:
    """Copy `src` to `dst` through a temporary sibling, so `dst` is never half-written."""
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.tmp-"))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        os.chmod(tmp, 0o755)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass(eq=False)
class _Job:
    """What every round reads: the run's fixed pieces, and the reward once a round has needed it."""

    cfg: RejectionSamplingConfig
    out: Path
    tokenizer: object
    max_length: int
    prompt_texts: list[str]
    prompt_ids: list[list[int]]
    device: torch.device
    dist: Dist
    stream: PromptStream
    expected: str  # settings_hash(cfg): a finished round must carry the same
    data_key: str
    reward: object = None  # built on the first round that samples: a resumed run may not need it


def _start(cfg: RejectionSamplingConfig, out: Path) -> _Job:
    """Tokenizer, resolved max_length, prompts and runtime; out/ created."""
    tokenizer = load_tokenizer(cfg.model)
    max_length = resolve_max_length(cfg.model, cfg.max_length)
    check_completion_room(cfg.max_prompt_length, max_length)
    prompt_texts, prompt_ids = load_prompt_ids(cfg.prompts, tokenizer, cfg.max_prompt_length)
    device, dist = runtime(cfg.train.device)
    stream = PromptStream(len(prompt_ids), cfg.prompts_per_round or len(prompt_ids), cfg.seed)
    job = _Job(cfg=cfg, out=out, tokenizer=tokenizer, max_length=max_length, prompt_texts=prompt_texts,
               prompt_ids=prompt_ids, device=device, dist=dist, stream=stream, expected=settings_hash(cfg),
               data_key=file_fingerprint(cfg.prompts))
    out.mkdir(parents=True, exist_ok=True)
    return job


def _finished_figures(job: _Job, round_dir: Path) -> dict:
    """A finished round's figures, once its settings are checked to be the current ones."""
    finished = read_json(round_dir / DONE)
    if finished.get("settings_hash") != job.expected:
        raise ValueError(
            f"{round_dir} was finished with other settings; delete {job.out} (or rerun the recipe with --redo) "
            "to start over"
        )
    return finished["figures"]


def _selection(job: _Job, r: int, round_dir: Path, policy) -> dict:
    """The round's kept samples: sampled, scored and written by the main process unless a killed
    run already wrote them; read back by every process."""
    cfg, prompt_ids = job.cfg, job.prompt_ids
    if not (round_dir / SELECTION).exists() and job.dist.is_main:
        job.reward = job.reward or build_reward(cfg.reward, job.tokenizer, job.device)
        idx = job.stream.indices(r) if cfg.prompts_per_round else list(range(len(prompt_ids)))
        selection, records = sample_and_select(cfg, policy, job.tokenizer, job.reward,
                                               [job.prompt_texts[i] for i in idx], [prompt_ids[i] for i in idx],
                                               seed=iteration_seed(cfg.seed, r))
        write_jsonl(round_dir / "data" / "selected.jsonl", records)
        write_json(round_dir / SELECTION, selection)  # after the records: its presence means both exist
    barrier(job.dist)
    return read_json(round_dir / SELECTION)


def _fine_tune(job: _Job, r: int, round_dir: Path, policy, selection: dict) -> dict:
    """SFT of the policy on the kept samples; the round's figures."""
    cfg = job.cfg
    rows = training_rows(selection, job.max_length)
    figures = {"round": r, **selection["figures"]}
    if rows:
        ids_key = hashlib.sha256(json.dumps([selection["prompt_ids"], selection["completion_ids"]]).encode())
        result = train(policy, [len(x) for x in rows], sft_step_fns(rows, job.tokenizer.pad_token_id), cfg.train,
                       round_dir, device=job.device, dist=job.dist,
                       data_key=f"{job.data_key}:{ids_key.hexdigest()[:16]}",
                       name=f"rejection sampling {r + 1}/{cfg.rounds}")
        figures.update({"steps": result["steps"], "train_loss": result["train"].get("loss", float("nan"))})
    else:  # nothing passed the filter: the policy goes on unchanged
        figures.update({"steps": 0, "train_loss": float("nan")})
    return figures


def _run_round(job: _Job, r: int, round_dir: Path, policy_path: str) -> dict:
    """Round r from the policy at `policy_path`: select, fine-tune, save round-<r>/model and done.json."""
    seed_everything(job.cfg.train.seed)
    policy = load_policy(policy_path, job.cfg.dtype, job.device, job.cfg.lora)
    selection = _selection(job, r, round_dir, policy)
    figures = _fine_tune(job, r, round_dir, policy, selection)
    if job.dist.is_main:
        save_pretrained_atomic(policy, job.tokenizer, round_dir / "model")
        write_json(round_dir / DONE, {"settings_hash": job.expected, "figures": figures,
                                      "problems": selection["problems"]})
        # the round's model is saved: its optimizer state (twice the model's size) is no longer needed
        if not job.cfg.train.keep_checkpoints:
            shutil.rmtree(round_dir / "checkpoints", ignore_errors=True)
    barrier(job.dist)
    return figures


def run(cfg: RejectionSamplingConfig, out: Path) -> dict:
    job = _start(cfg, out)
    rounds: list[dict] = []
    policy_path = cfg.model
    for r in range(cfg.rounds):
        round_dir = out / f"round-{r}"
        if (round_dir / DONE).exists():
            rounds.append(_finished_figures(job, round_dir))
        else:
            rounds.append(_run_round(job, r, round_dir, policy_path))
        policy_path = str(round_dir / "model")

    if job.dist.is_main:
        copy_dir_atomic(Path(policy_path), out / "model")
    return finish(out, cfg, {
        "rounds": rounds,
        "reward": cfg.model_dump()["reward"],
        "samples_per_prompt": cfg.samples_per_prompt,
        "keep": cfg.keep,
        "min_reward": cfg.min_reward,
    }, job.dist)
