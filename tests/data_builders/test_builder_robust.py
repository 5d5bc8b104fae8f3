"""The builder against hostile or odd inputs: workers that outlive a killed build, clips that go
missing silently (symlinked / unreadable folders), an --out that is a file, merge messages."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_builders.inputs import discover_clips
from emollm.cli import main as cli
from emollm.cli.main import EXIT_USER_ERROR
from emollm.errors import ConfigError

FAST = ["build.au_fps=3"]
REPO = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except ImportError:  # /proc: direct children are enough (spawn workers are direct children)
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
        return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and PR_SET_PDEATHSIG")
def test_kill_9_of_a_two_worker_build_leaves_no_worker(sample_dir, tmp_path) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    for n in range(4):  # enough work that the workers are busy when the build dies
        shutil.copy(sample_dir / "single_face.mp4", clips / f"c{n}.mp4")
    out = tmp_path / "ds"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "emollm.cli.main", "--quiet", "build", str(clips), "--out", str(out),
                             "--workers", "2", *FAST], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            # the spawned pool workers (the resource tracker is a child too; it ends by itself)
            workers = [
                p for p in _children(proc.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
            ]
            if len(workers) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None and len(workers) >= 2, "the build never started its two workers"
        time.sleep(1.0)  # let them start on a clip
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        killed_at = time.time()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        left = [p for p in workers if _alive(p)]
        assert not left, f"workers {left} outlived the killed build"
        time.sleep(1.0)
        late = [p.name for p in (out / ".parts").glob("*.json") if p.stat().st_mtime > killed_at + 0.05]
        assert not late, f"parts written after the build died: {late}"
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in workers:  # a failed run must not leave its orphans behind either
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_orphaned_worker_stops_before_writing(monkeypatch) -> None:
    from data_builders import pool

    monkeypatch.setattr(pool, "_PARENT_PID", os.getppid() + 1)  # as if the build had died
    assert pool.parent_gone()
    exited = []
    monkeypatch.setattr(pool.os, "_exit", lambda code: exited.append(code))
    pool.stop_if_orphaned()
    assert exited == [1]
    monkeypatch.setattr(pool, "_PARENT_PID", os.getppid())
    assert not pool.parent_gone()


# ------------------------------------------------------------------------------------------ no clip silently absent


def _tree(sample_dir: Path, tmp_path: Path) -> Path:
    """clips/ with a real clip, a symlinked folder living elsewhere, a link loop and a folder that
    cannot be listed (simulated: the tests run as root, for whom chmod 000 changes nothing)."""
    root = tmp_path / "clips"
    (root / "real").mkdir(parents=True)
    shutil.copy(sample_dir / "single_face.jpg", root / "real" / "a.jpg")
    elsewhere = tmp_path / "elsewhere" / "speaker2"
    elsewhere.mkdir(parents=True)
    shutil.copy(sample_dir / "multi_face.jpg", elsewhere / "b.jpg")
    os.symlink(elsewhere, root / "linked")
    os.symlink(root, root / "real" / "back_to_root")  # a loop: walked once, not forever
    (root / "locked").mkdir()
    shutil.copy(sample_dir / "single_face.jpg", root / "locked" / "c.jpg")
    os.symlink(tmp_path / "nowhere", root / "unplugged")  # a folder on a drive that is gone
    return root


@pytest.fixture
def locked(monkeypatch):
    real_scandir = os.scandir

    def scandir(path="."):  # noqa: ANN001, ANN202
        if os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_discovery_follows_links_once_and_reports_what_it_cannot_read(sample_dir, tmp_path, locked) -> None:
    root = _tree(sample_dir, tmp_path)
    shutil.copy(sample_dir / "single_face.jpg", root / "real" / "back\\slash.jpg")  # a Windows separator in a name
    shutil.copy(sample_dir / "single_face.jpg", os.path.join(os.fsencode(root / "real"), b"latin1_\xe9.jpg"))
    problems: list[dict] = []
    clips = discover_clips(root, problems)
    assert [c.id for c in clips] == ["linked/b", "real/a"]  # the loop back to the root adds nothing
    by_id = {p["id"]: p for p in problems}
    assert len(by_id) == 4 and {"locked", "unplugged", "real/back\\slash.jpg"} <= set(by_id)
    assert sum("UTF-8" in p["reason"] for p in problems) == 1 and "backslash" in by_id["real/back\\slash.jpg"]["reason"]
    assert by_id["locked"]["stage"] == "discover" and "Permission denied" in by_id["locked"]["reason"]
    assert by_id["unplugged"]["error_type"] == "BrokenLink"


def test_build_counts_unreadable_folders_in_errors_jsonl(sample_dir, tmp_path, locked, capsys) -> None:
    root = _tree(sample_dir, tmp_path)
    out = tmp_path / "ds"
    assert cli.main(["--quiet", "build", str(root), "--out", str(out), *FAST]) == 2  # something could not be used
    records = [json.loads(line)["id"] for line in (out / "annotations.jsonl").open(encoding="utf-8")]
    assert sorted(records) == ["linked/b", "real/a"]
    errors = {e["id"]: e for e in map(json.loads, (out / "errors.jsonl").open(encoding="utf-8"))}
    assert set(errors) == {"locked", "unplugged"} and errors["locked"]["stage"] == "discover"
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["errors"] == 2 and manifest["errors_by_stage"] == {"discover": 2}
    assert "see errors.jsonl" in capsys.readouterr().err


def test_merge_names_the_clips_without_a_part(sample_dir, tmp_path, capsys) -> None:
    root = tmp_path / "clips"
    root.mkdir()
    for n in range(8):
        shutil.copy(sample_dir / "single_face.jpg", root / f"clip{n}.jpg")
    out = tmp_path / "ds"
    assert cli.main(["--quiet", "build", str(root), "--out", str(out), "--shard", "0/4", *FAST]) == 0
    assert cli.main(["--quiet", "build", str(root), "--out", str(out), "--merge", *FAST]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    line = next(ln for ln in err if ln.startswith("error:"))
    assert "6 clip(s) have no finished part yet: 'clip1', 'clip2', 'clip3', 'clip5', 'clip6' and 1 more" in line


def test_out_pointing_at_a_file_or_a_loop_is_one_line(sample_dir, tmp_path, capsys) -> None:
    root = tmp_path / "clips"
    root.mkdir()
    shutil.copy(sample_dir / "single_face.jpg", root / "a.jpg")
    (tmp_path / "afile").write_text("keep me")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub", tmp_path / "loop"):
        assert cli.main(["--quiet", "build", str(root), "--out", str(out), *FAST]) == EXIT_USER_ERROR
        err = capsys.readouterr().err
        assert "this is a bug" not in err and str(out) in err and "--out" in err
    assert (tmp_path / "afile").read_text() == "keep me"
    for args in (["review", "export", str(tmp_path), "--out", str(tmp_path / "afile")],):
        (tmp_path / "annotations.jsonl").write_text("")
        assert cli.main(["--quiet", *args]) == EXIT_USER_ERROR
        assert "this is a bug" not in capsys.readouterr().err


def test_clips_folder_over_a_symlink_loop_is_one_line(tmp_path, capsys) -> None:
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    assert cli.main(["--quiet", "build", str(tmp_path / "a"), "--out", str(tmp_path / "ds"), *FAST]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "this is a bug" not in err and "clips folder" in err
    with pytest.raises(ConfigError):
        discover_clips(tmp_path / "a")


@pytest.mark.parametrize("content", [None, '{"torn', "[1]\n", b"\xff\xfe",
                                     '{"schema_version": 1, "id": "x", "media": {}, "au_source": null, '
                                     '"pseudo_label": null, "provenance": {}, "review": {}}\n',
                                     '{"schema_version": 1, "id": 5, "media": {"path": "a.mp4"}, "au_source": null, '
                                     '"pseudo_label": null, "provenance": {}, "review": {}}\n'])  # fmt: skip
def test_odd_annotations_are_one_line_errors(tmp_path, capsys, content) -> None:
    ds = tmp_path / "ds"
    ds.mkdir()
    if isinstance(content, bytes):
        (ds / "annotations.jsonl").write_bytes(content)
    elif content is not None:
        (ds / "annotations.jsonl").write_text(content, encoding="utf-8")
    (tmp_path / "fix.csv").write_text("id,label\nx,happy\n", encoding="utf-8")
    for args in (["review", "export", str(ds), "--out", str(tmp_path / "rv")],
                 ["review", "import", str(ds), str(tmp_path / "fix.csv")]):  # fmt: skip
        assert cli.main(["--quiet", *args]) == EXIT_USER_ERROR
        err = capsys.readouterr().err
        assert "this is a bug" not in err and "annotations.jsonl" in err, err


def test_merr_import_refuses_names_that_cannot_be_ids(tmp_path) -> None:
    from data_builders.formats.merr import import_merr
    from emollm.errors import RecordSchemaError

    src = tmp_path / "merr"
    src.mkdir()
    (src / "MERR_coarse_grained.txt").write_text(
        "ok_1 10 happy\n../../outside/x 12 sad\n/abs 3 sad\n", encoding="utf-8"
    )
    with pytest.raises(RecordSchemaError) as info:
        import_merr(src, tmp_path / "ds")
    assert (
        "'../../outside/x'" in info.value.message
        and "'/abs'" in info.value.message
        and "2 MERR name(s)" in info.value.message
    )
    assert not (tmp_path / "ds").exists()  # refused before writing anything


def test_csvs_that_are_not_utf8_are_one_line_errors(tmp_path, capsys) -> None:
    from data_builders.inputs import read_labels
    from data_builders.review import read_corrections

    bad = tmp_path / "labels.csv"
    bad.write_bytes(b"id,label\nclip\xe9,happy\n")  # Latin-1, as a spreadsheet may save it
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_labels(bad)
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_corrections(bad)


@pytest.mark.parametrize("loader", ["rules", "phrases", "writer_prompt"])
def test_a_users_yaml_table_with_a_duplicate_key_is_one_line(loader, tmp_path):
    # a lab's own AU rules / phrase table / writer prompt: a key written twice must not silently win
    from data_builders.phrases import load_phrases
    from data_builders.rules import load_rules
    from data_builders.writers import load_writer_prompt
    from emollm.errors import EmollmError

    path = tmp_path / "table.yaml"
    path.write_text("rules:\n  happy: {}\n  happy: {}\n", encoding="utf-8")
    load = {"rules": load_rules, "phrases": load_phrases, "writer_prompt": load_writer_prompt}[loader]
    with pytest.raises(EmollmError) as err:
        load(str(path))
    assert "\n" not in err.value.message
    assert f"{path} (line 3, column 3): invalid YAML: duplicate key 'happy' (first set at line 2)" in err.value.message
