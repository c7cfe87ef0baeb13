"""The one training loop (optimizer, schedule, accumulation, DDP, logging, checkpoints, resume)."""

from alignlab.train.distributed import Dist, init_distributed, pick_device
from alignlab.train.loop import NonFiniteLossError, ResumeMismatchError, StepFns, train
from alignlab.train.settings import TrainSettings

__all__ = [
    "Dist", "init_distributed", "pick_device", "NonFiniteLossError", "ResumeMismatchError",
    "StepFns", "train", "TrainSettings",
]
