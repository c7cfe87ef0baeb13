"""Read records from users' data files, and write JSON Lines safely.

`read_records` turns any of the usual places a dataset lives into a list of `(record, Source)`:

- ``.jsonl``: one JSON object per line; blank lines are skipped; each record knows its line;
- ``.json``: a list of objects, or an object whose ``"data"`` field is that list;
- ``.parquet``: read with pyarrow;
- a directory written by ``datasets`` ``save_to_disk`` (a Dataset, or a DatasetDict whose split is
  chosen by `split`, default ``"train"``);
- a local directory of data files in hub layout (``train.jsonl``, ``data/test-*.parquet``, ...):
  the split's files are found by the `datasets` rules; .jsonl and .parquet files are then read
  here (so errors name the actual file and line), anything else by ``datasets.load_dataset`` in
  streaming mode (nothing downloaded, no cache written; sources then read ``dir::split: row N``).

A split may also be written into the path: ``"prefs_dir::test"``. Everything except .jsonl only
knows row numbers, so its sources read ``row N``.

`datasets` and `pyarrow` are imported only when needed: importing alignlab.data stays fast.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from alignlab.data.errors import DataError, DataFileNotFoundError, Source

Record = dict[str, Any]
SPLIT_SEPARATOR = "::"
DEFAULT_SPLIT = "train"


def read_records(path: str | Path, split: str | None = None) -> list[tuple[Record, Source]]:
    """All records of a data file or dataset directory, each with where it came from.

    Raises DataError (naming the file and line/row) for unreadable content and for an empty
    dataset, and DataFileNotFoundError (a DataError and a FileNotFoundError) for a missing path.
    """
    path, split = _split_from_path(path, split)
    name = str(path)
    if not path.exists():
        raise DataFileNotFoundError(Source(name), None, "no such file or directory")
    if path.is_dir():
        records, name = _read_directory(path, split)
    else:
        _reject_split_for_file(path, split)
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            records = _read_jsonl(path)
        elif suffix == ".json":
            records = _read_json(path)
        elif suffix == ".parquet":
            records = _read_parquet(path)
        else:
            raise DataError(
                Source(name), None,
                f"unsupported file type {suffix or '(none)'!r}; expected .jsonl, .json, .parquet "
                "or a dataset directory",
            )
    if not records:
        raise DataError(Source(name), None, "the dataset is empty (no records)")
    return records


def write_jsonl(path: str | Path, records: Iterable[Record]) -> Path:
    """Write `records` as JSON Lines, atomically: readers see the old file or the new, never half.

    The data goes to a temporary file in the same directory, is fsynced, then renamed over `path`
    (a rename within one filesystem is atomic). Parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False, default=_json_default))
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Never leave a half-written temporary file behind.
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


# --- paths and splits -------------------------------------------------------------------------


def _split_from_path(path: str | Path, split: str | None) -> tuple[Path, str | None]:
    """Separate a ``path::split`` suffix (unless a file by that full name exists)."""
    text = str(path)
    if SPLIT_SEPARATOR in text and not Path(text).exists():
        text, _, inline_split = text.rpartition(SPLIT_SEPARATOR)
        if split is not None and split != inline_split:
            raise DataError(
                Source(str(path)), None,
                f"split given twice and differently: {inline_split!r} in the path, {split!r} as argument",
            )
        split = inline_split or None
    return Path(text), split


def _reject_split_for_file(path: Path, split: str | None) -> None:
    if split not in (None, DEFAULT_SPLIT):
        raise DataError(
            Source(str(path)), None,
            f"split {split!r} requested, but a single file has no splits "
            "(splits exist for directories written by datasets' save_to_disk or in hub layout)",
        )


# --- files ------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[tuple[Record, Source]]:
    # Read bytes and decode line by line, so a bad byte is reported with its line number.
    name = str(path)
    records = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark, as some editors write
        source = Source(name, number, "line")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                source, None, f"not valid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
            ) from None
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(source, None, f"invalid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise DataError(source, None, f"expected a JSON object, got {_json_type(value)}")
        records.append((value, source))
    return records


def _read_json(path: Path) -> list[tuple[Record, Source]]:
    name = str(path)
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(Source(name), None, f"not valid UTF-8 (at byte offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DataError(Source(name), None, f"invalid JSON: {exc}") from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise DataError(
            Source(name), None,
            f"expected a list of objects or an object with a 'data' list, got {_json_type(value)}",
        )
    return _rows(value, name)


def _read_parquet(path: Path) -> list[tuple[Record, Source]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(Source(str(path)), None, f"cannot read parquet: {exc}") from None
    return _rows(table.to_pylist(), str(path))


def _rows(values: list, name: str) -> list[tuple[Record, Source]]:
    records = []
    for number, value in enumerate(values, start=1):
        source = Source(name, number, "row")
        if not isinstance(value, dict):
            raise DataError(source, None, f"expected an object, got {_json_type(value)}")
        records.append((value, source))
    return records


# --- directories ------------------------------------------------------------------------------


def _read_directory(path: Path, split: str | None) -> tuple[list[tuple[Record, Source]], str]:
    """Records of a save_to_disk directory or a hub-layout directory, and the name to cite."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return _read_saved_dataset(path, split)
    return _read_hub_layout(path, split)


def _read_saved_dataset(path: Path, split: str | None) -> tuple[list[tuple[Record, Source]], str]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(Source(str(path)), None, f"cannot load dataset directory: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        loaded, name = _choose_split(loaded, path, split)
    else:
        _reject_split_for_file(path, split)
        name = str(path)
    return _rows(loaded.to_list(), name), name


def _read_hub_layout(path: Path, split: str | None) -> tuple[list[tuple[Record, Source]], str]:
    files = _plain_split_files(path)
    if files is not None:
        chosen_files, name = _choose_split(files, path, split)
        records = []
        for file in chosen_files:
            records.extend(_read_jsonl(file) if file.suffix.lower() == ".jsonl" else _read_parquet(file))
        return records, name

    import datasets

    try:
        # Streaming reads the files directly: no Arrow cache is written, nothing is downloaded.
        splits = datasets.load_dataset(str(path), streaming=True)
    except Exception as exc:
        raise DataError(
            Source(str(path)), None,
            f"cannot read directory as a dataset (expected save_to_disk output or data files "
            f"such as train.jsonl / data/train-*.parquet): {exc}",
        ) from None
    dataset, name = _choose_split(splits, path, split)
    try:
        rows = list(dataset)
    except Exception as exc:
        raise DataError(Source(name), None, f"cannot read records: {exc}") from None
    return _rows(rows, name), name


def _plain_split_files(path: Path) -> dict[str, list[Path]] | None:
    """The files of each split, when they are all .jsonl or .parquet and no dataset card
    configures the layout; then we read them ourselves, so errors name the file and its line.

    The split is resolved by the `datasets` rules (train.jsonl, data/test-00000-of-00001.parquet,
    ...). None means: leave it all to `datasets.load_dataset`.
    """
    card = path / "README.md"
    if card.is_file() and card.read_text(encoding="utf-8", errors="replace").startswith("---"):
        return None  # the card's YAML may declare configs and data_files
    try:
        from datasets.data_files import DataFilesDict, get_data_patterns

        resolved = DataFilesDict.from_patterns(get_data_patterns(str(path)), base_path=str(path))
    except Exception:
        return None  # no data files, or a datasets version without these helpers
    splits = {str(name): [_as_given(path, f) for f in files] for name, files in resolved.items()}
    if not all(f.suffix.lower() in (".jsonl", ".parquet") for files in splits.values() for f in files):
        return None
    return splits


def _as_given(directory: Path, resolved_file: str) -> Path:
    """`resolved_file` (absolute, as datasets resolves it) spelled under `directory` as the user gave it."""
    try:
        return directory / Path(resolved_file).relative_to(directory.resolve())
    except ValueError:
        return Path(resolved_file)


def _choose_split(splits, path: Path, split: str | None):
    chosen = split or DEFAULT_SPLIT
    if chosen not in splits:
        raise DataError(
            Source(str(path)), None,
            f"no split {chosen!r}; available: {', '.join(sorted(splits))} (choose with split=... "
            f"or '{path}{SPLIT_SEPARATOR}<split>')",
        )
    return splits[chosen], f"{path}{SPLIT_SEPARATOR}{chosen}"


# --- helpers ----------------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _json_default(value: Any) -> Any:
    """Serialise numpy scalars/arrays and paths, which datasets and scorers often hand back."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"object of type {type(value).__name__} is not JSON serializable")


def _fsync_directory(directory: Path) -> None:
    # Make the rename itself durable; not possible on every platform (e.g. Windows), so best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
