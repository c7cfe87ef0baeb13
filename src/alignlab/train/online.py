"""The online loop shared by PPO, RLOO, GRPO and online DPO: collect, then update, repeat.

Each iteration the stage's `collect(iteration)` samples from the current policy, scores the
samples and returns the *experience*: a dict of tensors with one row per sample (right-padded
`[N, T]` ids/masks, `[N, T-1]` per-token tensors, `[N]` per-sample tensors). The loop then runs
`update_epochs` passes over shuffled minibatches of those rows, one optimizer step per minibatch,
calling the stage's `loss(micro_batch)`.

Batch sizes are the algorithm's, never a device knob: `prompts_per_iteration` prompts are sampled,
each `minibatch_size` samples make one optimizer step; `micro_batch_size` only splits a minibatch
to save memory and does not change the update (each micro-batch's mean loss is weighted by its
share of the minibatch's tokens or samples, as the stage's `weight` says).

Under torchrun every process samples its own share of each iteration's prompts (whole groups), and
each optimizer step sums the processes' gradients of a loss normalised by the global count, so the
sizes above stay global and the update is the one a single process would make on all the samples.
Rollout figures are averaged over the processes (counts are summed); process 0 writes logs and
checkpoints.

Checkpoints are written at the start of an iteration, after its rollouts passed the KL bound, so a
checkpoint always holds a policy whose samples were checked; a resumed run re-collects that
iteration with the same seed (sampling is deterministic per iteration) and goes on exactly.

Reward-hacking monitors (`stage.monitor`, `alignlab.train.monitors`) read each iteration's rollout
figures at the same point, before the update. A monitor that fires with `warn` is logged and
listed in the result; one with `stop` ends the run there, without updating on those rollouts.
While a stop monitor is past its threshold no checkpoint is written, so the newest checkpoint
predates the steps that made it fire (with a stop monitor the starting policy is checkpointed at
iteration 0, the fallback when the crossing began at once): the policy is restored from it and
it becomes the stage's model. The run is then finished: its final checkpoint records the stop,
and a rerun returns the same result instead of training past it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from alignlab.train.checkpoint import latest_checkpoint, load_checkpoint
from alignlab.train.distributed import Dist, all_gather_objects
from alignlab.train.engine import TrainState, optimizer_step, run_key
from alignlab.train.monitors import HackingMonitor, Verdict
from alignlab.train.progress import RunLog, StepLog
from alignlab.train.sharding import is_sharded
from alignlab.train.settings import OnlineSettings

__all__ = ["Experience", "KLBoundError", "OnlineSettings", "OnlineStage", "run_online"]

Experience = dict[str, Tensor]
log = logging.getLogger(__name__)


class KLBoundError(RuntimeError):
    """The policy drifted further from the reference than the configured bound allows."""


@dataclass
class OnlineStage:
    """What an algorithm supplies to the loop."""

    collect: Callable[[int], tuple[Experience, dict[str, float]]]
    """iteration -> (experience rows, rollout metrics such as reward and kl)"""
    loss: Callable[[Experience], tuple[Tensor, dict[str, Tensor]]]
    """micro-batch -> (its mean loss, metrics)"""
    weight: Callable[[Experience], Tensor] = field(default=lambda b: torch.tensor(float(len(next(iter(b.values()))))))
    """a micro-batch's size in the units its loss averages over (samples by default, tokens for token means)"""
    after_iteration: Callable[[int, dict[str, float]], dict[str, float]] | None = None
    """runs after each update (e.g. the adaptive KL controller); may add figures to the log"""
    state: dict[str, Any] = field(default_factory=dict)
    """objects with state_dict()/load_state_dict() saved in checkpoints (e.g. the KL controller)"""
    recent_samples: Callable[[int], list[dict]] | None = None
    """n -> up to n of the last collected samples as {prompt, completion, reward}, for samples.jsonl"""
    fresh_samples: Callable[[int], list[dict]] | None = None
    """n -> n new samples from the current policy (the final one's, after the last update)"""
    monitor: HackingMonitor | None = None
    """reward-hacking monitors fed each iteration's rollout figures (warn, or stop keeping an earlier policy)"""


def _trim(batch: Experience) -> Experience:
    """Drop the padding columns every row of a micro-batch shares (rows are right-padded)."""
    if "attention_mask" not in batch:
        return batch
    width = batch["attention_mask"].shape[1]
    used = int(batch["attention_mask"].sum(1).max())
    if used == width:
        return batch
    out = {}
    for key, value in batch.items():
        if value.dim() >= 2 and value.shape[1] == width:
            out[key] = value[:, :used]
        elif value.dim() >= 2 and value.shape[1] == width - 1:
            out[key] = value[:, : used - 1]
        else:
            out[key] = value
    return out


def _rows(experience: Experience, index: Tensor) -> Experience:
    return {k: v[index] for k, v in experience.items()}


def run_online(
    policy: nn.Module,
    stage: OnlineStage,
    settings: OnlineSettings,
    out_dir: Path,
    *,
    device: torch.device,
    expected_samples: int,
    extra_modules: dict[str, nn.Module] | None = None,
    data_key: str = "",
    name: str = "online",
    save_snapshot: Callable[[Path], None] | None = None,
    dist: Dist = Dist(),
) -> dict:
    """Run `settings.iterations` collect→update cycles; returns the last logged figures.

    With `settings.snapshot_every`, `save_snapshot(dir)` writes the policy to
    `snapshots/iter-NNNNN` (the overoptimisation view evaluates them); every process calls it
    (`stages.common.save_trained_model`: process 0 writes, a sharded policy is gathered first)."""
    s = settings
    _check_divisible(s, dist, name)
    total_steps = s.iterations * s.update_epochs * math.ceil(expected_samples / s.minibatch_size)
    state = TrainState.create(policy, s, total_steps=total_steps, warmup_steps=int(s.warmup_ratio * total_steps),
                              out_dir=out_dir, key=run_key(s, data_key), extras=extra_modules, stateful=stage.state,
                              dist=dist, device=device, name=name)
    meta = state.resume()
    start = 0 if meta is None else (s.iterations if meta.get("finished") else meta["iteration"])
    resumed_before_update = meta is not None and not meta.get("finished", False)
    monitor = _resume_monitor(stage.monitor, meta, state)
    run_log = RunLog(out_dir, start, s.iterations, name, dist.is_main)
    samples_log = _samples_log(stage, s, dist, out_dir, start)
    last: dict = {}
    final_step = meta["step"] if meta is not None and meta.get("finished") else s.iterations  # a stop's, if any
    for iteration in range(start, s.iterations):
        tick = time.perf_counter()
        with state.autocast():  # rollout at the training precision, as the update sees it (and as TRL's generate runs)
            experience, figures = stage.collect(iteration)
        figures, n = _global_figures(figures, _count(experience), dist)
        rollout_s = time.perf_counter() - tick
        if samples_log is not None:
            _write_samples(samples_log, stage.recent_samples(s.log_samples), step=iteration + 1)
        figures, verdict, before = _check_rollouts(state, monitor, figures, iteration)
        if verdict is not None and verdict.stop is not None:
            run_log.write({"step": iteration + 1, **figures, "samples": n, "rollout_s": rollout_s})
            _restore_before_breach(state, verdict.stop)
            final_step = iteration + 1
            break
        # (not the checkpoint this run resumed from)
        if _checkpoint_due(s, iteration, monitor, verdict) and not (resumed_before_update and iteration == start):
            state.save(iteration, {"iteration": iteration, "finished": False, **_monitor_meta(before)}, final=False)

        tick = time.perf_counter()
        update = _update(state, stage, experience, iteration)
        update_s = time.perf_counter() - tick
        if stage.after_iteration is not None:
            figures = {**figures, **stage.after_iteration(iteration, figures)}
        done = iteration + 1
        last = _iteration_line(state, done, {**figures, **update}, n, rollout_s=rollout_s, update_s=update_s)
        if done % s.log_every == 0 or done == s.iterations or (verdict is not None and verdict.fired):
            run_log.write(last, (done, f"reward {figures.get('reward', float('nan')):.3f} "
                                       f"kl {figures.get('kl', float('nan')):.2f}"))
        if save_snapshot is not None and s.snapshot_every and done % s.snapshot_every == 0:
            save_snapshot(out_dir / "snapshots" / f"iter-{done:05d}")  # every process: a sharded policy is gathered
    _final_samples(state, stage, samples_log, start, final_step)
    return _finish(state, monitor, run_log, last, final_step)


def _finish(state: TrainState, monitor: HackingMonitor | None, run_log: RunLog, last: dict, final_step: int) -> dict:
    """The final checkpoint (with the monitor's state: a stop stays a stop) and the run's result."""
    s = state.settings
    state.save(final_step, {"iteration": s.iterations, "finished": True,
                            **_monitor_meta(monitor.state_dict() if monitor is not None else None)}, final=True)
    last = last or run_log.last_training_line()
    run_log.close()
    result = {"train": last, "iterations": s.iterations, "processes": state.dist.world_size}
    if monitor is not None:
        result["monitors"] = monitor.report()
    return result


def _check_rollouts(state: TrainState, monitor: HackingMonitor | None, figures: dict,
                    iteration: int) -> tuple[dict, Verdict | None, dict | None]:
    """The KL bound, then the monitors on this iteration's rollout figures: (the figures with the
    monitors' own, their verdict, the monitor's state before this step: what a resume here starts from)."""
    _check_kl_bound(state, figures, iteration)
    before = monitor.state_dict() if monitor is not None else None
    verdict = _watch(monitor, iteration + 1, figures, state.name, loud=state.dist.is_main)
    return {**figures, **(verdict.figures if verdict is not None else {})}, verdict, before


def _resume_monitor(monitor: HackingMonitor | None, meta: dict | None, state: TrainState) -> HackingMonitor | None:
    """The monitor as it was before observing the iteration a run resumes at (a finished run that a
    monitor stopped says so: it is not trained past the stop)."""
    if monitor is not None and meta is not None and "monitor" in meta:
        monitor.load_state_dict(meta["monitor"])
        if meta.get("finished") and monitor.stopped is not None and state.dist.is_main:
            log.warning("%s: this run was stopped by monitor %s at step %d and is finished; it is not trained past "
                        "the stop. Delete %s to run it again.", state.name, monitor.stopped["monitor"],
                        monitor.stopped["step"], state.checkpoints)
    return monitor


def _checkpoint_due(s: OnlineSettings, iteration: int, monitor: HackingMonitor | None, verdict: Verdict | None) -> bool:
    due = bool(s.save_every) and iteration % s.save_every == 0 and iteration > 0
    if monitor is not None and monitor.can_stop:
        # the starting policy is the fallback of a stop; no checkpoint while a stop monitor is past its threshold
        due = (due and not verdict.holding) or iteration == 0
    return due


def _monitor_meta(monitor_state: dict | None) -> dict:
    return {} if monitor_state is None else {"monitor": monitor_state}


def _watch(monitor: HackingMonitor | None, step: int, figures: dict, name: str, loud: bool) -> Verdict | None:
    """Feed the monitor this step's rollout figures (the same on every process); a monitor that
    fires is logged by process 0."""
    if monitor is None:
        return None
    verdict = monitor.observe(step, figures)
    for r in verdict.fired if loud else []:
        log.warning("%s: reward-hacking monitor %s %s at step %d: %s = %.4g, past %g for %d step(s) since step %d",
                    name, r["monitor"], "stops the run" if r["action"] == "stop" else "warns", step, r["figure"],
                    r["value"], r["threshold"], step - r["began"] + 1, r["began"])
    return verdict


def _restore_before_breach(state: TrainState, stop: dict) -> None:
    """Load the newest checkpoint (written before the stop monitor's crossing began) into the policy,
    and note in the stop's record which policy that is: the one after `kept_iteration` updates."""
    kept = latest_checkpoint(state.checkpoints)
    meta = load_checkpoint(kept, state.model, state.optimizer, state.scheduler, state.extras)
    stop.update({"kept_checkpoint": kept.name, "kept_iteration": meta["iteration"]})
    if state.dist.is_main:
        log.warning("%s: stopped at step %d; the model kept is the policy after %d iteration(s) (checkpoint %s), "
                    "from before %s crossed its threshold at step %d", state.name, stop["step"], meta["iteration"],
                    kept.name, stop["monitor"], stop["began"])


def _iteration_line(state: TrainState, done: int, figures: dict, n: int, rollout_s: float, update_s: float) -> dict:
    return {"step": done, **figures, "lr": state.scheduler.get_last_lr()[0], "samples": n, "rollout_s": rollout_s,
            "update_s": update_s, "samples_per_s": n / max(rollout_s + update_s, 1e-9)}


def _final_samples(state: TrainState, stage: OnlineStage, samples_log: StepLog | None, start: int, step: int) -> None:
    """The trained policy's own samples, after the last update or from the policy a stopped run kept
    (a sharded policy samples on every process)."""
    s = state.settings
    wanted = s.log_samples > 0 and stage.recent_samples is not None and stage.fresh_samples is not None
    if wanted and start < s.iterations and (state.dist.is_main or is_sharded(state.model)):
        records = stage.fresh_samples(s.log_samples)
        if samples_log is not None:
            _write_samples(samples_log, records, step=step, final=True)
    if samples_log is not None:
        samples_log.close()


def _samples_log(stage: OnlineStage, s: OnlineSettings, dist: Dist, out_dir: Path, start: int) -> StepLog | None:
    """What the policy says, readable as it trains; a resumed run drops the lines past its checkpoint."""
    if not (dist.is_main and s.log_samples > 0 and stage.recent_samples is not None):
        return None
    return StepLog(out_dir / "samples.jsonl", resume_step=start, tensorboard=False)


def _write_samples(samples_log: StepLog, records: list[dict], step: int, final: bool = False) -> None:
    for record in records:
        samples_log.write({"step": step, **({"final": True} if final else {}), **record})


def _check_kl_bound(state: TrainState, figures: dict[str, float], iteration: int) -> None:
    """Stop before updating on rollouts past `max_kl`, keeping the last checkpoint."""
    bound = state.settings.max_kl
    if bound is None or figures.get("kl", 0.0) <= bound:
        return
    kept = latest_checkpoint(state.checkpoints)
    raise KLBoundError(
        f"{state.name}: mean sequence KL to the reference reached {figures['kl']:.3f} at iteration {iteration + 1}, "
        f"past max_kl={bound}; stopped before updating on it. "
        + (f"The last good checkpoint is kept: {kept}." if kept else "No checkpoint was written yet.")
        + " Lower the learning rate or raise the KL coefficient; rerunning resumes from the checkpoint."
    )


def _update(state: TrainState, stage: OnlineStage, experience: Experience, iteration: int) -> dict:
    """`update_epochs` passes of shuffled minibatches; returns the mean of each figure over steps.

    Each process takes its own rows, `minibatch_size / world_size` of them per step; a process that
    runs out of rows before the others joins the remaining steps with nothing (zero gradients)."""
    s, dist = state.settings, state.dist
    n = _count(experience)
    local_size = s.minibatch_size // dist.world_size
    micro = s.micro_batch_size or s.minibatch_size
    steps_per_epoch = max(all_gather_objects(math.ceil(n / local_size), dist))
    sums: dict[str, float] = {}
    steps = 0
    generator = torch.Generator().manual_seed(s.seed * 1_000_003 + iteration + 104_729 * dist.rank)

    def part_loss(batch: Experience, normaliser: Tensor):
        loss, metrics = stage.loss(batch)
        return loss * (stage.weight(batch).float() / normaliser), metrics

    def spare() -> Experience:  # a row to run a zero-weighted pass on (a sharded policy's collectives)
        return {k: v.to(state.device) for k, v in _trim(_rows(experience, torch.arange(min(n, 1)))).items()}

    state.model.train()
    for _ in range(s.update_epochs):
        order = torch.randperm(n, generator=generator)
        for step in range(steps_per_epoch):
            rows = order[step * local_size : (step + 1) * local_size]
            micro_batches = [{k: v.to(state.device) for k, v in _trim(_rows(experience, rows[i : i + micro])).items()}
                             for i in range(0, len(rows), micro)]
            weights = [stage.weight(b).float() for b in micro_batches]
            totals, grad_norm = optimizer_step(state, micro_batches, weights, part_loss,
                                               where=f"iteration {iteration + 1}",
                                               hint="Lower the learning rate or check the reward.", spare=spare)
            totals["grad_norm"] = grad_norm.detach().float()
            for k, v in totals.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            steps += 1
    return {k: v / max(steps, 1) for k, v in sums.items()}


# Rollout figures that count things: summed over the processes (the others are averaged).
COUNTED_FIGURES = frozenset({"dropped_samples", "pairs", "pairs_dropped", "pairs_identical"})


def _count(experience: Experience) -> int:
    return len(next(iter(experience.values()))) if experience else 0


def _check_divisible(s: OnlineSettings, dist: Dist, name: str) -> None:
    for key in ("prompts_per_iteration", "minibatch_size"):
        value = getattr(s, key)
        if value % dist.world_size:
            raise ValueError(f"{name}: train.{key}={value} counts over all {dist.world_size} processes and must be "
                             f"a multiple of {dist.world_size}")


def _global_figures(figures: dict[str, float], n: int, dist: Dist) -> tuple[dict[str, float], int]:
    """This iteration's rollout figures over every process: counts summed, the rest averaged with
    each process weighted by its samples (NaN, e.g. from a process left with none, is skipped)."""
    if not dist.enabled:
        return figures, n
    gathered = all_gather_objects((figures, n), dist)
    keys = list(dict.fromkeys(k for f, _ in gathered for k in f))
    out: dict[str, float] = {}
    for key in keys:
        values = [(float(f[key]), count) for f, count in gathered if key in f]
        if key in COUNTED_FIGURES:
            out[key] = sum(v for v, _ in values)
            continue
        finite = [(v, count) for v, count in values if math.isfinite(v)]
        weight = sum(count for _, count in finite)
        if weight > 0:
            out[key] = sum(v * count for v, count in finite) / weight
        else:
            out[key] = sum(v for v, _ in finite) / len(finite) if finite else float("nan")
    return out, sum(count for _, count in gathered)
