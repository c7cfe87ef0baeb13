"""The `alignlab` command: `alignlab run RECIPE.yaml`, or one stage alone (`alignlab dpo ...`).

A stage command takes `--out DIR`, an optional `--config FILE.yaml`, and any of the stage's
settings as `--key value` (nested ones as `--train.lr 1e-5`); values are parsed as YAML scalars
and validated, so an unknown or mistyped setting is an error that names it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
import yaml
from pydantic import ValidationError
from safetensors import SafetensorError
from typer.core import TyperCommand

from alignlab.stages import STAGES

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Align language models: SFT, reward models, DPO and more, from one recipe or one stage at a time.")

# What a user's input causes (bad settings, data, paths, model files) and gets as one `error:` line.
# OSError covers a missing file, a parent that is a file, no permission, a full disk.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError, SafetensorError)
PACKAGE_DIR = Path(__file__).resolve().parent


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(1)


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="recipe YAML file"),
    out: Optional[Path] = typer.Option(None, help="run directory (default runs/<recipe name>)"),
    redo: Optional[str] = typer.Option(None, help="run this stage and all later ones again"),
    until: Optional[str] = typer.Option(None, help="stop after this stage"),
) -> None:
    """Run a recipe: finished stages are skipped, an unfinished one resumes from its checkpoint."""
    from alignlab.pipeline.runner import run_recipe

    def go():
        if out is not None:
            check_writable(out, "--out")
        run_recipe(recipe, out, redo, until)
        _print_headlines(recipe, out)

    _guarded(go)


def _print_headlines(recipe: Path, out: Optional[Path]) -> None:
    """After a recipe, its report stages' headline figures: a run should end with its result."""
    from alignlab.pipeline.recipe import load_recipe
    from alignlab.stages.common import done_hash, stage_metrics
    from alignlab.stages.evaluation.report import headline
    from alignlab.train.distributed import launched_rank

    if launched_rank()[0] != 0:
        return
    _, run_dir, stages = load_recipe(recipe, out)
    for stage in stages:
        stage_dir = run_dir / stage.name
        if stage.type == "report" and done_hash(stage_dir) is not None:
            typer.echo("\n".join(headline(stage_metrics(stage_dir))))


def _finished_earlier(out: Path, cfg) -> bool:
    """A finished stage is not run again (its checkpoints are gone, so it would start over): with
    the same settings it is skipped, with others it is an error, as in a recipe."""
    from alignlab.stages.common import config_hash, done_hash, drop_checkpoints

    found = done_hash(out)
    if found is None:
        return False
    if found != config_hash(cfg):
        raise ValueError(f"{out} holds this stage finished with other settings; pass another --out or delete it")
    drop_checkpoints(out, cfg)  # a kill may have landed between done.json and their deletion
    return True


def check_writable(path: Path, what: str) -> None:
    """Refuse, before any work, an output path that cannot be created: its nearest existing ancestor
    must be a directory this process may write in (a model loaded first would be time lost)."""
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(f"{what} {path}: {ancestor} is a file, not a directory")
    if ancestor != path.absolute() and not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path}: no permission to create it in {ancestor}")


def parse_overrides(args: list[str]) -> dict:
    """`--a.b value` / `--a.b=value` pairs into a nested dict, values parsed as YAML scalars."""
    settings: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; settings are given as --key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                value = "true"  # a bare flag
            else:
                i += 1
                value = args[i]
        node = settings
        parts = key.replace("-", "_").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value) if value != "" else ""
        i += 1
    return settings


def _guarded(fn) -> None:
    from alignlab.data.errors import DataError

    _quiet_libraries()
    try:
        fn()
    except DataError as e:
        _fail(str(e))
    except ValidationError as e:
        from alignlab.pipeline.recipe import describe_error

        _fail("; ".join(describe_error(err) for err in e.errors()))
    except USER_ERRORS as e:
        if os.environ.get("ALIGNLAB_DEBUG"):
            raise
        _fail(_describe(e))
    except RuntimeError as e:
        if _out_of_memory(e) and not os.environ.get("ALIGNLAB_DEBUG"):
            _fail(f"out of memory: {str(e).splitlines()[0]} (lower train.micro_batch_size or the lengths, "
                  "or turn on train.gradient_checkpointing)")
        # alignlab's own RuntimeErrors are messages for the user (a diverged loss, a stale checkpoint);
        # one from torch or another library's insides is a bug, and its traceback is what a report needs
        if os.environ.get("ALIGNLAB_DEBUG") or not _raised_by_alignlab(e):
            raise
        _fail(str(e))


def _describe(e: BaseException) -> str:
    if isinstance(e, KeyError):
        return str(e.args[0])
    if isinstance(e, SafetensorError):
        return f"a safetensors file could not be read (truncated or not safetensors?): {e}"
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)


def _out_of_memory(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError)


def _raised_by_alignlab(e: BaseException) -> bool:
    """Whether the innermost frame of `e`'s traceback is alignlab's own code."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


def _settings_help(config_cls) -> str:
    from alignlab.pipeline.settings_help import settings_lines

    # "\b" keeps click/typer from joining the lines into one paragraph
    return "\b\n" + "\n".join(settings_lines(config_cls))


def _stage_command(kind: str):
    stage = STAGES[kind]

    def command(
        ctx: typer.Context,
        out: Path = typer.Option(..., help="stage directory to write (model/, metrics.json, log.jsonl)"),
        config: Optional[Path] = typer.Option(None, help="YAML file of settings; --key value overrides it"),
    ) -> None:
        config_cls, run_stage = stage.load()
        from alignlab.stages.common import deep_merge, no_empty_directory_on_failure

        def go():
            check_writable(out, "--out")
            base = yaml.safe_load(config.read_text()) if config else {}
            cfg = config_cls.model_validate(deep_merge(base or {}, parse_overrides(list(ctx.args))))
            if _finished_earlier(out, cfg):
                typer.secho(f"{out}: finished earlier with these settings; its metrics:", err=True)
                typer.echo((out / "metrics.json").read_text())
                return
            with no_empty_directory_on_failure(out):
                metrics = run_stage(cfg, out)
            typer.echo(json.dumps(metrics, indent=1, default=float))

        _guarded(go)

    command.__doc__ = f"{stage.summary[0].upper()}{stage.summary[1:]}."
    return command


class _StageCommand(TyperCommand):
    """A stage's command, whose settings list is built (importing the stage) only for its own --help:
    `alignlab --help` then starts without loading torch and every stage."""

    def format_help(self, ctx, formatter) -> None:
        if "Settings:" not in (self.help or ""):
            config_cls, _ = STAGES[self.name.replace("-", "_")].load()
            self.help = f"{self.help}\n\nSettings:\n\n{_settings_help(config_cls)}"
        return super().format_help(ctx, formatter)


for _kind in STAGES:
    app.command(
        name=_kind.replace("_", "-"),
        cls=_StageCommand,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(_stage_command(_kind))


@app.command(name="convert-gguf")
def convert_gguf(
    gguf_file: Path = typer.Argument(..., help="a .gguf model file (llama.cpp's format)"),
    out_dir: Path = typer.Argument(..., help="the Hugging Face model directory to write"),
    dtype: str = typer.Option("float32", help="the dtype the quantized weights are expanded to"),
) -> None:
    """Convert a GGUF model into a trainable Hugging Face directory (weights dequantized, tokenizer, chat template)."""
    from alignlab.models.gguf import convert_gguf as convert

    def go():
        check_writable(out_dir, "OUT_DIR")
        typer.echo(f"wrote {convert(gguf_file, out_dir, dtype=dtype)}")

    _guarded(go)


@app.command(name="serve-llm")
def serve_llm(
    model: str = typer.Argument(..., help="hub id, local directory or .gguf file of a causal LM"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000, help="0 picks a free port"),
    device: Optional[str] = typer.Option(None, help="default: CUDA when present, else CPU"),
    dtype: str = typer.Option("float32"),
    batch_size: int = typer.Option(16),
    model_name: Optional[str] = typer.Option(None, help="the name clients ask for (default: MODEL)"),
    api_key_env: Optional[str] = typer.Option(None, help="require a Bearer key read from this environment variable"),
    guard_input: Optional[str] = typer.Option(None, help="input classifier directory (a classifier stage's model/): "
                                              "requests it flags are refused"),
    guard_output: Optional[str] = typer.Option(None, help="streaming output classifier directory: answers stop at "
                                               "the first token it flags"),
    input_threshold: float = typer.Option(0.5, help="with --guard-input: refuse at or above this score"),
    output_threshold: float = typer.Option(0.5, help="with --guard-output: stop at or above this score"),
) -> None:
    """Serve a local model over an OpenAI-compatible HTTP API (/v1/completions with log-probs, /v1/chat/completions),
    optionally behind constitutional classifiers (a withheld answer has finish_reason content_filter)."""
    from alignlab.feedback.ai.llm.server import serve

    def go():
        gate = None
        if guard_input or guard_output:
            from alignlab.guard.settings import GuardSettings

            settings = GuardSettings(input=guard_input, output=guard_output, input_threshold=input_threshold,
                                     output_threshold=output_threshold)
            gate = lambda llm: settings.build(llm.tokenizer, llm.device).gate(llm.pad_id)  # noqa: E731
        serve(model, host=host, port=port, device=device, dtype=dtype, batch_size=batch_size, model_name=model_name,
              api_key_env=api_key_env, gate=gate)

    _guarded(go)


def _add_label_commands() -> None:
    from alignlab.feedback.human.labelling.cli import label_app

    app.add_typer(label_app, name="label", help="The human labelling app: serve items, manage tokens, export labels.")


_add_label_commands()


def _quiet_libraries() -> None:
    """Keep the terminal for alignlab's own progress: no per-file bars or load reports (run by every
    command that works, not at start-up: importing transformers costs a second that --help need not pay)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _working_directory_importable() -> None:
    """A `callable` reward's `my_rewards:fn` is found in the working directory, as `python -m` finds
    it there: the console script's own sys.path[0] is its bin directory."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def main() -> None:
    _working_directory_importable()
    try:
        app()
    except SystemExit as done:
        if "torch.distributed" in sys.modules:  # never imported by --help or a failed start
            import torch.distributed as dist

            if dist.is_initialized():  # a torchrun worker: see exit_worker
                from alignlab.train.distributed import exit_worker

                exit_worker(0 if done.code is None else done.code if isinstance(done.code, int) else 1)
        raise


if __name__ == "__main__":
    sys.exit(main())
