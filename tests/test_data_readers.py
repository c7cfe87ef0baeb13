"""Readers: every supported source gives the same records with their locations; bad files fail clearly."""

from __future__ import annotations

import json
import pickle

import pytest

from alignlab.data import DataError, DataFileNotFoundError, Source, read_records, write_jsonl

ROWS = [
    {"prompt": "hello", "completion": "world", "n": 1},
    {"prompt": "good", "completion": "bye", "n": 2},
    {"prompt": "one", "completion": "two", "n": 3},
]


def write_lines(path, lines: list[str | bytes]) -> str:
    data = b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines)
    path.write_bytes(data)
    return str(path)


# --- the error type ---------------------------------------------------------------------------


def test_data_error_message_names_file_line_and_field():
    err = DataError(Source("data/train.jsonl", 7), "chosen", "must be a non-empty string (got int)")
    assert str(err) == "data/train.jsonl: line 7: field 'chosen': must be a non-empty string (got int)"
    assert err.field == "chosen" and err.source.line == 7
    assert isinstance(err, ValueError)
    row = DataError(Source("prefs.parquet", 3, "row"), None, "bad")
    assert str(row) == "prefs.parquet: row 3: bad"
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.field == "chosen"


# --- supported sources ------------------------------------------------------------------------


def test_jsonl_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [json.dumps(ROWS[0]), "", "   ", json.dumps(ROWS[1])])
    records = read_records(path)
    assert [r for r, _ in records] == ROWS[:2]
    assert [s.line for _, s in records] == [1, 4]
    assert records[0][1] == Source(path, 1, "line")


def test_jsonl_with_byte_order_mark_and_crlf(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\r\n" + json.dumps(ROWS[1]).encode() + b"\r\n")
    assert [r for r, _ in read_records(path)] == ROWS[:2]


@pytest.mark.parametrize("wrap", [False, True])
def test_json_list_or_data_object(tmp_path, wrap):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"data": ROWS} if wrap else ROWS))
    records = read_records(path)
    assert [r for r, _ in records] == ROWS
    assert records[2][1] == Source(str(path), 3, "row")


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    records = read_records(path)
    assert [r for r, _ in records] == ROWS
    assert str(records[1][1]) == f"{path}: row 2"


def test_save_to_disk_dataset(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    records = read_records(tmp_path / "ds")
    assert [r for r, _ in records] == ROWS
    assert records[0][1].kind == "row"


def test_save_to_disk_dataset_dict_split_by_argument_or_path(tmp_path):
    import datasets

    path = tmp_path / "dd"
    datasets.DatasetDict(
        train=datasets.Dataset.from_list(ROWS), test=datasets.Dataset.from_list(ROWS[:1])
    ).save_to_disk(str(path))
    assert [r for r, _ in read_records(path)] == ROWS  # default split: train
    assert [r for r, _ in read_records(path, split="test")] == ROWS[:1]
    test_records = read_records(f"{path}::test")
    assert [r for r, _ in test_records] == ROWS[:1]
    assert str(test_records[0][1]) == f"{path}::test: row 1"
    with pytest.raises(DataError, match=r"no split 'validation'; available: test, train"):
        read_records(path, split="validation")


def test_hub_layout_directory_reads_jsonl_itself_with_line_numbers(tmp_path):
    (tmp_path / "hub").mkdir()
    write_lines(tmp_path / "hub" / "train.jsonl", [json.dumps(r) for r in ROWS])
    write_lines(tmp_path / "hub" / "test.jsonl", [json.dumps(ROWS[2]), "{oops"])
    records = read_records(tmp_path / "hub")
    assert [r for r, _ in records] == ROWS
    assert records[1][1] == Source(str(tmp_path / "hub" / "train.jsonl"), 2, "line")
    with pytest.raises(DataError, match=r"hub/test.jsonl: line 2: invalid JSON"):
        read_records(tmp_path / "hub", split="test")


def test_hub_layout_sharded_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "hub" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ROWS[:2]), tmp_path / "hub" / "data" / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[2:]), tmp_path / "hub" / "data" / "train-00001-of-00002.parquet")
    assert [r for r, _ in read_records(tmp_path / "hub")] == ROWS


def test_hub_layout_other_formats_go_through_datasets(tmp_path):
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "train.csv").write_text("prompt,completion\nhello,world\ngood,bye\n")
    records = read_records(tmp_path / "hub")
    assert [r for r, _ in records] == [{"prompt": "hello", "completion": "world"}, {"prompt": "good", "completion": "bye"}]
    assert str(records[1][1]) == f"{tmp_path / 'hub'}::train: row 2"


# --- bad input --------------------------------------------------------------------------------


def test_bad_json_line_is_named(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [json.dumps(ROWS[0]), json.dumps(ROWS[1]), '{"prompt": "x",'])
    with pytest.raises(DataError) as info:
        read_records(path)
    assert str(info.value).startswith(f"{path}: line 3: invalid JSON: ")
    assert info.value.source == Source(path, 3, "line")


def test_line_that_is_not_an_object(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [json.dumps(ROWS[0]), "[1, 2]"])
    with pytest.raises(DataError, match=r"train.jsonl: line 2: expected a JSON object, got array"):
        read_records(path)


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [json.dumps(ROWS[0]), b'{"prompt": "caf\xe9"}'])
    with pytest.raises(DataError, match=r"train.jsonl: line 2: not valid UTF-8"):
        read_records(path)


def test_missing_file_is_clear(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataFileNotFoundError, match="no such file or directory") as info:
        read_records(missing)
    assert isinstance(info.value, FileNotFoundError) and str(missing) in str(info.value)


def test_empty_dataset_is_an_error(tmp_path):
    path = write_lines(tmp_path / "empty.jsonl", ["", ""])
    with pytest.raises(DataError, match="empty.jsonl: the dataset is empty"):
        read_records(path)


def test_unsupported_extension_and_split_on_a_file(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        read_records(tmp_path / "data.csv")
    path = write_lines(tmp_path / "train.jsonl", [json.dumps(ROWS[0])])
    with pytest.raises(DataError, match="a single file has no splits"):
        read_records(path, split="test")


# --- writing ----------------------------------------------------------------------------------


def test_write_jsonl_round_trips_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "out.jsonl"
    records = [{"text": "héllo ✓"}, {"x": [1, 2], "y": None}]
    assert write_jsonl(target, iter(records)) == target
    assert [r for r, _ in read_records(target)] == records
    assert "héllo" in target.read_text(encoding="utf-8")  # not \u-escaped
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.jsonl"]  # no temp file left


def test_write_jsonl_failure_leaves_old_file_intact(tmp_path):
    target = tmp_path / "out.jsonl"
    write_jsonl(target, [{"a": 1}])

    def records():
        yield {"a": 2}
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(target, records())
    assert [r for r, _ in read_records(target)] == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
