"""`alignlab label ...`: serve the labelling app, manage labellers' tokens, export the labels.

    alignlab label tokens DB --add alice --add bob      # prints each new token once
    alignlab label serve DATA.jsonl --db DB              # then each labeller opens /login?token=...
    alignlab label export DB --out prefs.jsonl           # prompt/chosen/rejected for `alignlab dpo`
    alignlab label export DB --out ranks.jsonl --format rankings
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

label_app = typer.Typer(
    add_completion=False, no_args_is_help=True,
    help="Human labelling: a local web app for A/B choices and K-way rankings, stored in SQLite.",
)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(1)


def _guarded(fn):
    """Run `fn`, turning users' mistakes (bad data, bad names, missing files) into one clear line."""
    from alignlab.data.errors import DataError

    try:
        return fn()
    except DataError as exc:
        _fail(str(exc))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        _fail(str(exc))


def default_db(data: Path) -> Path:
    """The database next to DATA: items.jsonl -> items.labels.sqlite."""
    return data.with_name(f"{data.stem}.labels.sqlite")


@label_app.command()
def serve(
    data: Path = typer.Argument(
        ..., help="JSONL of items: prompt + responses (2 or more), or prompt + chosen + rejected"),
    db: Optional[Path] = typer.Option(None, help="SQLite database (default: DATA's name with .labels.sqlite)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (loopback: this machine only)"),
    port: int = typer.Option(8765, help="port to listen on"),
    tokens: Optional[Path] = typer.Option(None, help="file of 'NAME TOKEN' lines to register first"),
    fsync: bool = typer.Option(False, "--fsync", help="flush each label to disk (survives power cuts, not only kills)"),
) -> None:
    """Serve the labelling app for the items of DATA; labellers open http://HOST:PORT/login?token=TOKEN.

    Keys for pairs: 1 or a = A is better, 2 or b = B is better, t = tie, s = skip.

    Keys for rankings: the response numbers best first (or click them), Backspace = take back the last pick, Enter = submit, s = skip.

    Any time: u = undo your last answer (it is deleted and its item shown again).
    """
    from alignlab.feedback.human.labelling.app import serve as serve_app
    from alignlab.feedback.human.labelling.items import load_label_items
    from alignlab.feedback.human.labelling.store import LabelStore

    def prepare():
        items = load_label_items(data)
        store = LabelStore(db or default_db(data), synchronous="FULL" if fsync else "NORMAL")
        try:
            added = store.add_items(items)
            if tokens is not None:
                store.add_labellers_from_file(tokens)
        except BaseException:
            store.close()
            raise
        return store, added

    store, added = _guarded(prepare)
    with store:
        where = f"http://{host}:{port}"
        names = [p.name for p in store.labellers() if p.active]
        typer.echo(f"{store.count_items()} items ({added} new) in {store.path}")
        if names:
            typer.echo(f"labellers: {', '.join(names)}; each opens {where}/login?token=THEIR_TOKEN")
        else:
            typer.echo(f"no labellers yet: add one with `alignlab label tokens {store.path} --add NAME` "
                       "(works while the app runs)")
        try:
            serve_app(store, host, port)
        except OSError as exc:  # e.g. the port is taken
            _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


@label_app.command()
def tokens(
    db: Path = typer.Argument(..., help="the labelling database (created if missing)"),
    add: List[str] = typer.Option([], "--add", help="new labeller NAME (repeatable); the token is printed once"),
    from_file: Optional[Path] = typer.Option(None, "--file", help="register the 'NAME TOKEN' lines of a file"),
    rotate: List[str] = typer.Option([], "--rotate", help="give labeller NAME a new token (repeatable)"),
    revoke: List[str] = typer.Option([], "--revoke", help="disable labeller NAME's token (labels are kept)"),
    show: bool = typer.Option(False, "--list", help="list labellers and how many items each answered"),
) -> None:
    """Manage labellers' tokens. Tokens are stored hashed: save the printed ones, they cannot be shown again."""
    from alignlab.feedback.human.labelling.store import LabelStore

    def go():
        with LabelStore(db) as store:
            if from_file is not None:
                for name in store.add_labellers_from_file(from_file):
                    typer.echo(f"added {name} (token from {from_file})")
            for name in add:
                typer.echo(f"{name}\t{store.add_labeller(name)}")
            for name in rotate:
                typer.echo(f"{name}\t{store.rotate_token(name)}")
            for name in revoke:
                store.revoke(name)
                typer.echo(f"revoked {name}")
            if show or not (add or rotate or revoke or from_file):
                for info in store.labellers():
                    state = "active" if info.active else "revoked"
                    typer.echo(f"{info.name}\t{state}\t{info.answered} answered")

    _guarded(go)


@label_app.command()
def export(
    db: Path = typer.Argument(..., help="the labelling database"),
    out: Path = typer.Option(..., help="JSONL file to write"),
    format: str = typer.Option(
        "preferences", help="preferences (prompt/chosen/rejected) or rankings (prompt/responses/ranking)"),
    ties: str = typer.Option("drop", help="preferences: drop ties, or 'soft' = keep them with label 0.5"),
    aggregate: str = typer.Option(
        "none", help="preferences: 'none' = a row per labeller and item, 'mean' = one per item, label = fraction"),
) -> None:
    """Export the labels as a dataset that `alignlab dpo` / load_preferences read."""
    from alignlab.feedback.human.labelling.export import export_preferences, export_rankings
    from alignlab.feedback.human.labelling.store import LabelStore

    def go():
        if not db.is_file():
            raise FileNotFoundError(f"{db}: no such labelling database")
        if format not in ("preferences", "rankings"):
            raise ValueError(f"--format must be 'preferences' or 'rankings' (got {format!r})")
        with LabelStore(db) as store:
            if format == "preferences":
                n = export_preferences(store, out, ties=ties, aggregate=aggregate)
            else:
                n = export_rankings(store, out)
        typer.echo(f"wrote {n} rows to {out}")

    _guarded(go)
