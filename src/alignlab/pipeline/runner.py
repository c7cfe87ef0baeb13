"""Run a recipe's stages in order: finished stages are skipped, an unfinished one resumes."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from alignlab.pipeline.recipe import PlannedStage, RecipeError, load_recipe
from alignlab.stages import stage_type
from alignlab.stages.common import (
    config_hash,
    done_hash,
    drop_checkpoints,
    no_empty_directory_on_failure,
    record_wall_time,
)
from alignlab.train.distributed import launched_rank, single_process

WAIT_POLL_S = 1.0


def _say(message: str) -> None:
    if launched_rank()[0] == 0:  # under torchrun one voice is enough
        print(message, file=sys.stderr, flush=True)


def _run_stage(stage: PlannedStage, out_dir: Path) -> dict | None:
    """Run one stage in this process. Under torchrun, a stage that does not train data-parallel
    (sampling, labelling, evaluation) runs on process 0 alone; the others wait for its done mark
    by watching the file system, so no collective can time out during a long stage."""
    rank, world = launched_rank()
    if world == 1 or stage_type(stage.type).data_parallel:
        return stage.run(stage.config, out_dir)
    if rank == 0:
        with single_process():
            return stage.run(stage.config, out_dir)
    while done_hash(out_dir) is None:
        time.sleep(WAIT_POLL_S)
    return None


def run_recipe(
    path: str | Path, out: str | Path | None = None, redo: str | None = None, until: str | None = None
) -> dict[str, dict]:
    """Validate the whole recipe, then run it (up to stage `until`); returns each stage's metrics."""
    name, run_dir, stages = load_recipe(path, Path(out) if out else None)
    names = [s.name for s in stages]
    for flag, stage_name in (("--redo", redo), ("--until", until)):
        if stage_name is not None and stage_name not in names:
            raise RecipeError(f"{flag} {stage_name!r}: no such stage (stages: {', '.join(names)})")
    if redo is not None:
        _redo_from(stages[names.index(redo) :], run_dir)
    if until is not None:
        stages = stages[: names.index(until) + 1]
    _check_finished_match(stages, run_dir)
    results: dict[str, dict] = {}
    for i, stage in enumerate(stages, 1):
        out_dir = run_dir / stage.name
        if done_hash(out_dir) is not None:
            if launched_rank()[0] == 0:
                drop_checkpoints(out_dir, stage.config)  # left by a kill just after done.json
            _say(f"[{i}/{len(stages)}] {stage.name}: finished earlier, skipped")
            continue
        start = time.perf_counter()
        with no_empty_directory_on_failure(out_dir, cleans=launched_rank()[0] == 0) as existed:
            _say(f"[{i}/{len(stages)}] {stage.name} ({stage.type}): {'resuming' if existed else 'running'} -> {out_dir}")
            metrics = _run_stage(stage, out_dir)
        if metrics is not None:
            results[stage.name] = metrics
        seconds = time.perf_counter() - start
        if launched_rank()[0] == 0:
            record_wall_time(out_dir, seconds)
        _say(f"[{i}/{len(stages)}] {stage.name}: done in {seconds:.1f} s")
    _say(f"recipe {name}: {'all ' if until is None else ''}{len(stages)} stages finished in {run_dir}")
    return results


def _redo_from(stages: list[PlannedStage], run_dir: Path) -> None:
    """Delete the stages to redo. Under torchrun process 0 deletes and then leaves a mark for this
    launch; the others wait for the mark, so none of them can see a stale done mark and skip."""
    rank, world = launched_rank()
    mark = run_dir / f".redo-{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}"
    if rank == 0:
        for stage in stages:
            shutil.rmtree(run_dir / stage.name, ignore_errors=True)
        if world > 1:
            run_dir.mkdir(parents=True, exist_ok=True)
            mark.touch()
        return
    while not mark.exists():
        time.sleep(WAIT_POLL_S)


def _check_finished_match(stages: list[PlannedStage], run_dir: Path) -> None:
    """A finished stage whose settings changed since is an error, not a silent reuse."""
    for stage in stages:
        found = done_hash(run_dir / stage.name)
        if found is not None and found != config_hash(stage.config):
            raise RecipeError(
                f"stage {stage.name!r} in {run_dir} finished with different settings; "
                f"rerun with --redo {stage.name} to run it and the stages after it again"
            )
