"""Settings shared by every training stage: optimisation, batching, precision, logging, checkpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainSettings(BaseModel):
    """How a stage trains. Batch sizes count examples (a pair counts once for preference stages).

    `batch_size` is the algorithm's batch: examples per optimizer step, summed over all processes.
    `micro_batch_size` is a per-process memory knob only: changing it (or the number of processes)
    does not change the update, because the loss is normalised by the whole step's count.
    """

    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="overrides epochs when set")
    batch_size: int = Field(16, gt=0)
    micro_batch_size: int | None = Field(None, gt=0, description="default: batch_size")
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0, description="overrides warmup_ratio when set")
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    device: str = "auto"
    log_every: int = Field(1, gt=0)
    eval_every: int | None = Field(None, gt=0)
    save_every: int | None = Field(50, gt=0, description="checkpoint period in steps; None: only at the end")
    group_by_length: bool = True
    keep_checkpoints: bool = Field(False, description="keep checkpoints/ after the model is written")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, about one more forward"
    )

    @model_validator(mode="after")
    def _micro_divides(self) -> "TrainSettings":
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise ValueError("micro_batch_size must not exceed batch_size")
        return self
