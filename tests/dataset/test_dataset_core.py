"""The dataset core (emollm.dataset): atomic writes, JSONL, the record reader, AUs and label sets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from emollm.dataset import io as dio
from emollm.dataset.aus import AU_INTENSITY_MAX, MERR_AUS
from emollm.dataset.label_sets import DATA_DIR, available, load_label_set
from emollm.dataset.record import RECORD_VERSION, read_annotations, read_build_errors, read_dataset
from emollm.errors import ConfigError, EmollmError, RecordSchemaError


def _record(i: int) -> dict:
    return {"schema_version": RECORD_VERSION, "id": f"c{i}", "media": {"path": f"c{i}.mp4", "kind": "video"},
            "au_source": "none", "pseudo_label": "happy", "provenance": {}, "review": {"state": "unreviewed"}}


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "a.txt"  # the folder is made
    dio.atomic_write_text(target, "old\n")
    dio.atomic_write_text(target, "néw\n", fsync=False)
    assert target.read_bytes() == "néw\n".encode()
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    dio.atomic_write_bytes(target, b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dio.os, "replace", broken_replace)
    with pytest.raises(OSError):
        dio.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_jsonl_round_trip_is_compact_utf8(tmp_path):
    rows = [{"id": "é", "n": 1}, {"id": "b", "x": [1, 2]}]
    dio.write_jsonl(tmp_path / "r.jsonl", rows)
    assert (tmp_path / "r.jsonl").read_text(encoding="utf-8") == '{"id": "é", "n": 1}\n{"id": "b", "x": [1, 2]}\n'
    assert dio.read_jsonl(tmp_path / "r.jsonl") == rows


def test_jsonl_bad_line_names_file_and_line_or_is_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n', encoding="utf-8")  # a torn last line after a blank one
    with pytest.raises(ConfigError, match=r"r\.jsonl:3: not a JSON line"):
        dio.read_jsonl(path, error=ConfigError)
    assert dio.read_jsonl(path, skip_bad=True) == [{"a": 1}]
    with pytest.raises(json.JSONDecodeError):
        dio.read_jsonl(path)
    assert list(dio.parse_jsonl(['{"a": 1}', "", "[2]"], where="x", numbered=True)) == [(1, {"a": 1}), (3, [2])]


def test_read_annotations_checks_each_record_and_names_the_line(tmp_path):
    path = tmp_path / "annotations.jsonl"
    dio.write_jsonl(path, [_record(0), _record(1)])
    assert [r["id"] for r in read_annotations(path)] == ["c0", "c1"]
    assert [r["id"] for r in read_dataset(tmp_path)] == ["c0", "c1"]
    bad = _record(2) | {"schema_version": 99}
    path.write_text(path.read_text(encoding="utf-8") + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(RecordSchemaError, match=r"annotations\.jsonl:3: clip record schema_version 99"):
        read_annotations(path)
    path.write_text('{"torn', encoding="utf-8")
    with pytest.raises(RecordSchemaError, match=r"annotations\.jsonl:1: not a JSON line"):
        read_annotations(path)
    with pytest.raises(EmollmError, match="not a built dataset"):
        read_dataset(tmp_path / "nothing")


def test_build_errors_reason_per_clip(tmp_path):
    assert read_build_errors(tmp_path) == {}
    dio.write_jsonl(tmp_path / "errors.jsonl", [{"id": "a", "reason": "no face"}, {"id": "b", "error": "x"}, {"id": "c"}])
    assert read_build_errors(tmp_path) == {"a": "no face", "b": "x", "c": "failed"}


def test_au_inventory_is_the_one_the_builder_and_model_use():
    from data_builders.au import MERR_AUS as builder_aus
    from emollm.modeling.au_encoder import MERR_AUS as model_aus

    assert MERR_AUS is builder_aus is model_aus  # one declaration, imported everywhere
    assert len(MERR_AUS) == 17 and MERR_AUS[0] == "AU01" and AU_INTENSITY_MAX == 5.0


def test_label_sets_ship_with_the_core_and_old_import_still_works():
    import eval.label_sets as old

    assert DATA_DIR.parent.name == "dataset" and (DATA_DIR / "merr.yaml").is_file()
    assert "merr" in available() and load_label_set("merr").shipped
    assert old.load_label_set is load_label_set  # a re-export, not a second copy


def test_the_core_imports_nothing_heavy():
    # the core must load without torch / the builder / the evaluator (it is their common bottom)
    code = ("import sys, emollm.dataset.io, emollm.dataset.record, emollm.dataset.aus, emollm.dataset.label_sets; "
            "print(sorted(m for m in ('torch', 'data_builders', 'eval', 'emollm.modeling', 'emollm.media') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.stdout.strip() == "[]"
