"""Step log (log.jsonl, TensorBoard where installed) and a progress bar that stays quiet under CI."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def progress_enabled() -> bool:
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true", "yes")


class StepLog:
    """Appends one JSON object per logged step; on resume drops the lines past the resumed step.

    Nothing is created until the first record: a run that fails before its first step leaves no
    log.jsonl or tensorboard/ behind. TensorBoard resumes at the checkpoint's step (`purge_step`),
    so a resumed run's steps are not shown twice."""

    def __init__(self, path: Path, resume_step: int = 0, tensorboard: bool = True):
        self.path, self.resume_step, self.tensorboard = path, resume_step, tensorboard
        self._file = None
        self._tb = None

    def _open(self) -> None:
        path, resume_step = self.path, self.resume_step
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if path.exists() and resume_step > 0:
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except json.JSONDecodeError:
                    break  # a line cut by a kill: everything after it is gone too
        path.write_text("".join(line + "\n" for line in kept))
        self._file = open(path, "a", encoding="utf-8")
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # events past the checkpoint (written before a kill) are dropped by TensorBoard's readers
                self._tb = SummaryWriter(str(path.parent / "tensorboard"),
                                         purge_step=resume_step + 1 if resume_step > 0 else None)
            except Exception:  # tensorboard not installed: log.jsonl is enough
                self._tb = None

    def write(self, record: dict) -> None:
        if self._file is None:
            self._open()
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


class Progress:
    """A rich progress bar over optimizer steps, or nothing when not on a terminal / under CI."""

    def __init__(self, total: int, start: int, description: str):
        self._bar = None
        if progress_enabled():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress
            from rich.progress import TextColumn, TimeRemainingColumn

            self._bar = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(description, total=total, completed=start, info="")

    def update(self, step: int, info: str = "") -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class RunLog:
    """A run's log.jsonl and progress bar, kept by process 0 (the other processes hold nothing)."""

    def __init__(self, out_dir: Path, start: int, total: int, name: str, is_main: bool):
        self.path = out_dir / "log.jsonl"
        self._log = StepLog(self.path, resume_step=start) if is_main else None
        self._bar = Progress(total, start, name) if is_main else None

    def write(self, record: dict, progress: tuple[int, str] | None = None) -> None:
        if self._log is not None:
            self._log.write(record)
            if progress is not None:
                self._bar.update(*progress)

    def last_training_line(self) -> dict:
        """The newest logged training figures (a line with a loss; eval lines have none)."""
        lines = [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()] if self.path.exists() else []
        train_lines = [x for x in lines if "loss" in x]
        return train_lines[-1] if train_lines else {}

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._bar.close()
