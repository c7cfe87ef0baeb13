"""The training blocks stages compose: how to optimise (`OptimSettings`), how a run is kept
(`RunSettings`), and the two drivers' batching on top of them (`TrainSettings` for the offline
loop, `OnlineSettings` for collect→update). Every knob is declared here once."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Schedule = Literal["linear", "cosine", "constant"]


class OptimSettings(BaseModel):
    """AdamW (no decay on biases and norm gains), clipping and warmup."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)


class SeedSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="seeds sampling, data order and splits; the same seed gives the same run")


class RunSettings(SeedSettings):
    """Where and how reproducibly a run trains, and what it keeps."""

    precision: Literal["fp32", "bf16"] = "fp32"
    device: str = "auto"
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="with several processes (torchrun): ddp keeps the whole model on each and sums the "
        "gradients; fsdp (FSDP2) shards weights, gradients and optimizer state block by block")
    cpu_offload: bool = Field(False, description="fsdp only: keep the sharded weights and optimizer state in CPU "
                              "memory (less GPU memory, slower steps)")
    log_every: int = Field(1, gt=0)
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, about one more forward"
    )
    keep_checkpoints: bool = Field(False, description="keep checkpoints/ after the model is written")

    @model_validator(mode="after")
    def _offload_shards(self) -> "RunSettings":
        if self.cpu_offload and self.parallel != "fsdp":
            raise ValueError("cpu_offload moves FSDP's shards to CPU memory: set parallel: fsdp too")
        return self


class TrainSettings(OptimSettings, RunSettings):
    """How an offline stage trains. Batch sizes count examples (a pair counts once for preference stages).

    `batch_size` is the algorithm's batch: examples per optimizer step, summed over all processes.
    `micro_batch_size` is a per-process memory knob only: changing it (or the number of processes)
    does not change the update, because the loss is normalised by the whole step's count.
    """

    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="overrides epochs when set")
    batch_size: int = Field(16, gt=0)
    micro_batch_size: int | None = Field(None, gt=0, description="memory knob only; default: batch_size")
    schedule: Schedule = "linear"
    warmup_steps: int | None = Field(None, ge=0, description="overrides warmup_ratio when set")
    eval_every: int | None = Field(None, gt=0)
    save_every: int | None = Field(50, gt=0, description="checkpoint period in steps; None: only at the end")
    group_by_length: bool = True

    @model_validator(mode="after")
    def _micro_divides(self) -> "TrainSettings":
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise ValueError("micro_batch_size must not exceed batch_size")
        return self


class OnlineSettings(OptimSettings, RunSettings):
    """How an online stage iterates and optimises. Sizes count prompts or samples, per iteration."""

    iterations: int = Field(100, gt=0, description="collect→update cycles")
    prompts_per_iteration: int = Field(64, gt=0)
    update_epochs: int = Field(1, gt=0, description="passes over each iteration's samples")
    minibatch_size: int = Field(64, gt=0, description="samples per optimizer step")
    micro_batch_size: int | None = Field(None, gt=0, description="memory knob only; default: minibatch_size")
    schedule: Schedule = "constant"
    save_every: int | None = Field(10, gt=0, description="checkpoint period in iterations")
    max_kl: float | None = Field(None, gt=0, description="stop when the rollouts' mean sequence KL to the reference exceeds this")
    snapshot_every: int | None = Field(None, gt=0, description="save the policy (HF format) under snapshots/ every N iterations")
    log_samples: int = Field(4, ge=0, description="samples (prompt, completion, reward) written to samples.jsonl each "
                             "iteration, and as many from the final policy; 0: none")
