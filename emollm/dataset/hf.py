"""A built dataset as a Hugging Face ``datasets.DatasetDict``, and back (docs/builder.md, "Hugging Face datasets").

``load_dataset(DIR)`` gives the clip records of ``DIR/annotations.jsonl`` grouped by their ``split``
field; ``load_dataset(DIR, instructions="emotion")`` the samples of ``DIR/instructions/emotion.jsonl``
grouped the same way. Media and AU side-file paths are absolute (records keep them relative to the
dataset dir). ``export_hf(DIR, OUT)`` (``emollm export --to hf``) saves both with ``save_to_disk``:
``OUT`` is the records' DatasetDict, ``OUT/instructions/<task>`` one per instruction file, and
``records_from_hf`` / ``samples_from_hf`` turn rows back into the very records and samples (equal
dicts, same key order, same order in the file).

Columns: the fields every reader wants are typed (strings, floats, ints, bools, lists of strings, the
``media`` / ``review`` / ``peak_frame`` structs; ``aus_at_peak`` as two parallel lists
``aus_at_peak_names`` / ``aus_at_peak_values`` in the record's order, since a struct would fix the AU
inventory). ``provenance_json`` holds the provenance as JSON text (its fields vary per record), and
``extra_json`` every other field (cue votes, prosody, rule scores, ...) plus any typed field whose value
does not fit its column exactly (an int where a float is declared, an unexpected key): nothing is
coerced. ``record_keys`` keeps which fields the record had, in order (absent and None differ),
``record_index`` its line in ``annotations.jsonl`` and ``dataset_dir`` the absolute dataset dir the
relative paths were resolved against (the side files, ``aus/*.npz``, stay there).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from emollm.dataset.io import read_jsonl
from emollm.dataset.record import read_dataset
from emollm.errors import EmollmError, RecordSchemaError
from emollm.paths import check_new_output

FORMAT_VERSION = 1
UNSPLIT = "unsplit"  # the DatasetDict key of rows whose split is None (the row's `split` column keeps None)
_HF_MARK = "dataset_dict.json"  # what save_to_disk writes at a DatasetDict's root


# -- typed columns -------------------------------------------------------------------------------
def _is_str(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _is_float(v: Any) -> bool:
    return v is None or type(v) is float  # an int stays in extra_json: 30 must not come back as 30.0


def _is_int(v: Any) -> bool:
    return v is None or type(v) is int


def _is_bool(v: Any) -> bool:
    return v is None or type(v) is bool


def _is_strs(v: Any) -> bool:
    return v is None or (type(v) is list and all(isinstance(x, str) for x in v))


def _is_struct(fields: dict[str, Callable[[Any], bool]]) -> Callable[[Any], bool]:
    def fits(v: Any) -> bool:  # exactly these keys, in this order: the struct gives all of them back
        return v is None or (type(v) is dict and list(v) == list(fields) and all(f(v[k]) for k, f in fields.items()))

    return fits


def _value(dtype: str):  # noqa: ANN202
    from datasets import Value

    return Value(dtype)


def _spec() -> tuple[dict[str, Any], dict[str, Any]]:
    """(record columns, instruction-sample columns): field -> (datasets feature, fits)."""
    s, f, i, b = (lambda: _value("string")), (lambda: _value("float64")), (lambda: _value("int64")), (lambda: _value("bool"))
    strs = lambda: [_value("string")]  # noqa: E731 - a python list is a list feature in datasets 3, 4 and 5
    record = {
        "schema_version": (i(), _is_int),
        "id": (s(), _is_str),
        "split": (s(), _is_str),
        "media": ({"path": s(), "kind": s()}, _is_struct({"path": _is_str, "kind": _is_str})),
        "duration_s": (f(), _is_float),
        "fps": (f(), _is_float),
        "num_frames": (i(), _is_int),
        "has_video": (b(), _is_bool),
        "has_audio": (b(), _is_bool),
        "aus_file": (s(), _is_str),
        "au_source": (s(), _is_str),
        "frames_analysed": (i(), _is_int),
        "face_frames": (i(), _is_int),
        "peak_frame": ({"index": i(), "timestamp_s": f(), "method": s(), "aus": strs(), "voiced": b()},
                       _is_struct({"index": _is_int, "timestamp_s": _is_float, "method": _is_str, "aus": _is_strs,
                                   "voiced": _is_bool})),
        "aus_present_at_peak": (strs(), _is_strs),
        "pseudo_label": (s(), _is_str),
        "pseudo_label_confidence": (f(), _is_float),
        "rule_label": (s(), _is_str),
        "rule_confidence": (f(), _is_float),
        "label": (s(), _is_str),
        "subtitle": (s(), _is_str),
        "subtitle_language": (s(), _is_str),
        "flags": (strs(), _is_strs),
        "review": ({"state": s(), "by": s(), "note": s()}, _is_struct({"state": _is_str, "by": _is_str, "note": _is_str})),
        "tone": (s(), _is_str),
        "expression": (s(), _is_str),
        "visual_description": (s(), _is_str),
        "coarse_description": (s(), _is_str),
        "reasoning": (s(), _is_str),
        "granularity": (s(), _is_str),
        "cue_agreement": (f(), _is_float),
    }
    sample = {
        "id": (s(), _is_str),
        "clip_id": (s(), _is_str),
        "task": (s(), _is_str),
        "messages": ([{"role": s(), "content": s()}],
                     lambda v: v is None or (type(v) is list and all(_is_struct({"role": _is_str, "content": _is_str})(m)
                                                                     and m is not None for m in v))),
        "target": (s(), _is_str),
        "label": (s(), _is_str),
        "split": (s(), _is_str),
        "granularity": (s(), _is_str),
        "media": (s(), _is_str),
    }
    return record, sample


def record_features():  # noqa: ANN201
    """The ``datasets.Features`` of a record row (see the module's doc)."""
    from datasets import Features

    record, _ = _spec()
    return Features({**{k: feat for k, (feat, _) in record.items()},
                     "aus_at_peak_names": [_value("string")], "aus_at_peak_values": [_value("float64")],
                     "provenance_json": _value("string"), "extra_json": _value("string"),
                     "record_keys": [_value("string")], "record_index": _value("int64"),
                     "dataset_dir": _value("string")})  # fmt: skip


def sample_features():  # noqa: ANN201
    """The ``datasets.Features`` of an instruction-sample row."""
    from datasets import Features

    _, sample = _spec()
    return Features({**{k: feat for k, (feat, _) in sample.items()}, "extra_json": _value("string"),
                     "record_keys": [_value("string")], "record_index": _value("int64"),
                     "dataset_dir": _value("string")})  # fmt: skip


# -- paths ---------------------------------------------------------------------------------------
def _absolute(root: str, path: Any) -> Any:
    if not isinstance(path, str) or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(root, path))


def _relative(root: str, path: Any) -> Any:
    # the builder writes paths with os.path.relpath (normalised, '/'): this gives back exactly that
    if not isinstance(path, str) or not os.path.isabs(path):
        return path
    return os.path.relpath(path, root).replace(os.sep, "/")


# -- rows <-> dicts ------------------------------------------------------------------------------
def _to_row(item: dict[str, Any], columns: dict[str, Any], index: int, root: str, *, record: bool) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(columns)
    extra: dict[str, Any] = {}
    for key, value in item.items():
        if record and key == "aus_at_peak" and (value is None or (type(value) is dict and all(
                isinstance(k, str) and type(x) is float for k, x in value.items()))):
            row["aus_at_peak_names"] = None if value is None else list(value)
            row["aus_at_peak_values"] = None if value is None else list(value.values())
        elif record and key == "provenance":
            row["provenance_json"] = json.dumps(value, ensure_ascii=False)
        elif key in columns and columns[key][1](value):
            row[key] = value
        else:
            extra[key] = value
            if record and key == "media" and isinstance(value, dict) and isinstance(value.get("path"), str):
                # extra_json has it whole; the column still gives path and kind to readers
                row["media"] = {"path": value["path"], "kind": value["kind"] if _is_str(value.get("kind")) else None}
    for key in ("aus_at_peak_names", "aus_at_peak_values", "provenance_json") if record else ():
        row.setdefault(key, None)
    if record:
        if row["media"] is not None:
            row["media"] = {**row["media"], "path": _absolute(root, row["media"]["path"])}
        row["aus_file"] = _absolute(root, row["aus_file"])
    else:
        row["media"] = _absolute(root, row["media"])
    row.update(extra_json=json.dumps(extra, ensure_ascii=False), record_keys=list(item), record_index=index,
               dataset_dir=root)
    return row


def _from_row(row: dict[str, Any], *, record: bool) -> dict[str, Any]:
    root = row["dataset_dir"]
    extra = json.loads(row["extra_json"]) if row.get("extra_json") else {}
    out: dict[str, Any] = {}
    for key in row["record_keys"]:
        if key in extra:
            value = extra[key]
        elif record and key == "aus_at_peak":
            names, values = row["aus_at_peak_names"], row["aus_at_peak_values"]
            value = None if names is None else dict(zip(names, values, strict=True))
        elif record and key == "provenance":
            value = json.loads(row["provenance_json"])
        else:
            value = row[key]
            if record and key == "media" and value is not None:
                value = {**value, "path": _relative(root, value["path"])}
            elif key in ("aus_file", "media"):
                value = _relative(root, value)
        out[key] = value
    return out


# -- loading -------------------------------------------------------------------------------------
def is_hf_export(path: str | os.PathLike) -> bool:
    """True for a folder ``save_to_disk`` wrote a DatasetDict to (``emollm export --to hf``)."""
    return (Path(path) / _HF_MARK).is_file()


def _split_key(split: Any) -> str:
    # a DatasetDict key names a folder on save_to_disk: a word (the row's `split` column keeps the exact value)
    if split is None:
        return UNSPLIT
    return re.sub(r"\W+", "_", str(split)).strip("_") or UNSPLIT


def _group(rows: Iterable[dict[str, Any]], features: Any):  # noqa: ANN202
    from datasets import Dataset, DatasetDict

    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(_split_key(row["split"]), []).append(row)
    return DatasetDict({k: Dataset.from_list(v, features=features) for k, v in groups.items()})


def _read_samples(path: Path) -> list[dict[str, Any]]:
    samples = read_jsonl(path, error=RecordSchemaError)
    for n, sample in enumerate(samples, 1):
        if not isinstance(sample, dict):
            raise RecordSchemaError(f"{path}: sample {n} is not a JSON object: not an instruction sample")
    return samples


def instruction_tasks(dataset_dir: str | os.PathLike) -> list[str]:
    """The tasks with an instruction file: ``DATASET_DIR/instructions/<task>.jsonl`` (or, in an
    export, ``OUT/instructions/<task>/``), sorted."""
    folder = Path(dataset_dir) / "instructions"
    if is_hf_export(dataset_dir):
        return sorted(p.name for p in folder.iterdir() if is_hf_export(p)) if folder.is_dir() else []
    return sorted(p.stem for p in folder.glob("*.jsonl")) if folder.is_dir() else []


def load_dataset(dataset_dir: str | os.PathLike, *, instructions: str | None = None):  # noqa: ANN201
    """A built dataset (or an ``emollm export --to hf`` folder) as a ``datasets.DatasetDict``, one
    entry per split: the clip records, or with ``instructions="emotion"`` the samples of
    ``instructions/emotion.jsonl``. A split None is keyed ``unsplit``."""
    root = Path(dataset_dir)
    if is_hf_export(root):
        target = root if instructions is None else root / "instructions" / instructions
        if not is_hf_export(target):
            raise EmollmError(f"{root} holds no instruction samples for task '{instructions}'",
                              hint=f"tasks there: {', '.join(instruction_tasks(root)) or 'none'}")
        return _load_from_disk(target)
    absolute = str(root.resolve())
    if instructions is None:
        records = read_dataset(root)
        columns = _spec()[0]
        return _group((_to_row(r, columns, n, absolute, record=True) for n, r in enumerate(records)), record_features())
    path = root / "instructions" / f"{instructions}.jsonl"
    if not path.is_file():
        read_dataset(root)  # a folder that is no built dataset at all is named as such first
        raise EmollmError(f"{path} does not exist: no instruction samples for task '{instructions}'",
                          hint=f"tasks there: {', '.join(instruction_tasks(root)) or 'none'}")
    columns = _spec()[1]
    return _group((_to_row(s, columns, n, absolute, record=False) for n, s in enumerate(_read_samples(path))),
                  sample_features())


def _load_from_disk(path: str | os.PathLike):  # noqa: ANN202
    from datasets import load_from_disk

    try:
        return load_from_disk(str(path))
    except (OSError, ValueError) as exc:  # a folder save_to_disk did not write, or one cut short
        raise EmollmError(f"{path}: not a readable `datasets` folder ({exc})",
                          hint="write one with: emollm export --to hf DATASET_DIR --out DIR") from None


_OWN = ("extra_json", "record_keys", "record_index", "dataset_dir")  # what makes a row convertible back


def _rows(data: Any) -> list[dict[str, Any]]:
    from datasets import Dataset, DatasetDict

    where = data if isinstance(data, (str, os.PathLike)) else "the dataset"
    if isinstance(data, (str, os.PathLike)):
        data = _load_from_disk(data)
    if isinstance(data, Dataset):
        parts = [data]
    elif isinstance(data, DatasetDict):
        parts = list(data.values())
    else:
        raise TypeError(f"a Dataset, DatasetDict or export folder, not {type(data).__name__}")
    for part in parts:
        missing = [c for c in _OWN if c not in part.column_names]
        if missing:
            raise EmollmError(f"{where}: lacks the columns {missing}: not made by emollm.load_dataset / export --to hf")
    return sorted((row for part in parts for row in part.to_list()), key=lambda r: r["record_index"])


def records_from_hf(data: Any) -> list[dict[str, Any]]:
    """The clip records of a records Dataset / DatasetDict (or an export folder), as ``annotations.jsonl``
    holds them: relative paths, the same fields in the same order, in file order."""
    return [_from_row(row, record=True) for row in _rows(data)]


def samples_from_hf(data: Any) -> list[dict[str, Any]]:
    """The instruction samples of an instruction Dataset / DatasetDict, as ``instructions/<task>.jsonl`` holds them."""
    return [_from_row(row, record=False) for row in _rows(data)]


def source_dataset_dir(path: str | os.PathLike) -> Path:
    """The built dataset folder behind ``path``: ``path`` itself, or, for an export, the folder it was
    exported from (its AU side files and default feature cache)."""
    return read_hf_export(path)[0] if is_hf_export(path) else Path(path)


def read_hf_export(path: str | os.PathLike) -> tuple[Path, list[dict[str, Any]]]:
    """(the dataset dir the export came from, its records as built): what training reads from an
    export folder; the AU side files (and the default feature cache) are that dataset dir's."""
    rows = _rows(path)
    roots = {row["dataset_dir"] for row in rows}
    if len(roots) != 1:
        raise EmollmError(f"{path}: the export holds {'no records' if not roots else 'records of several datasets'}",
                          hint="export one built dataset: emollm export --to hf DATASET_DIR --out DIR")
    return Path(roots.pop()), [_from_row(row, record=True) for row in rows]


# -- export --------------------------------------------------------------------------------------
def export_hf(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> dict[str, Any]:
    """Save a built dataset to ``out_dir`` with ``save_to_disk``: the records' DatasetDict at the root
    (``datasets.load_from_disk(out_dir)``), each task's samples in ``instructions/<task>/``. A non-empty
    ``out_dir`` is replaced only with ``overwrite``. Returns ``{"records": {split: n}, "instructions":
    {task: n}}``."""
    src, out = Path(dataset_dir), Path(out_dir)
    check_new_output(out, src, source_name="dataset dir", outside_hint="export to a folder outside the dataset",
                     overwrite=overwrite)
    records = load_dataset(src)  # reads and checks everything before anything is written
    tasks = {t: load_dataset(src, instructions=t) for t in instruction_tasks(src)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")  # a half-written export never has the real name
    from datasets.utils import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled

    bars = is_progress_bar_enabled()
    disable_progress_bars()  # `emollm export` prints one summary line, not a bar per split
    try:
        records.save_to_disk(str(tmp))
        for task, dd in tasks.items():
            dd.save_to_disk(str(tmp / "instructions" / task))
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    finally:
        if bars:
            enable_progress_bars()
        if tmp.exists():
            shutil.rmtree(tmp)
    return {"records": {k: len(v) for k, v in records.items()},
            "instructions": {t: sum(len(v) for v in dd.values()) for t, dd in tasks.items()}}


__all__ = ["FORMAT_VERSION", "UNSPLIT", "export_hf", "instruction_tasks", "is_hf_export", "load_dataset",
           "read_hf_export", "record_features", "records_from_hf", "sample_features", "samples_from_hf"]
