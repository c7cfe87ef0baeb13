"""The training engine (state, one optimizer step) and its two drivers: offline batches, online collect→update."""

from alignlab.train.distributed import Dist, init_distributed, pick_device
from alignlab.train.engine import NonFiniteLossError, ResumeMismatchError, TrainState, optimizer_step
from alignlab.train.loop import StepFns, train
from alignlab.train.settings import OnlineSettings, OptimSettings, RunSettings, TrainSettings

__all__ = [
    "Dist", "init_distributed", "pick_device", "NonFiniteLossError", "ResumeMismatchError", "TrainState",
    "optimizer_step", "StepFns", "train", "OnlineSettings", "OptimSettings", "RunSettings", "TrainSettings",
]
