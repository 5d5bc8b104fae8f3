"""emollm.paths: ids (and other outside text) become file names only inside their output folder."""

from __future__ import annotations

import os

import pytest

from emollm.errors import ConfigError, EmollmError, UnsafePathError
from emollm.paths import MAX_COMPONENT_BYTES, ensure_folder, flat_name, id_path, id_rel, inside


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "..", ".", "a/./b", "/etc/passwd", "C:/x", "a\\..\\x", "a/\x00b",
                                 "", "a//b", "a/"])  # fmt: skip
def test_unsafe_ids_are_refused_naming_the_id(tmp_path, bad) -> None:
    with pytest.raises(UnsafePathError) as info:
        id_path(tmp_path / "out", bad, "_peak.png")
    assert isinstance(info.value, EmollmError) and repr(bad) in info.value.message
    assert not (tmp_path / "out").exists()  # nothing created on the way


def test_nested_and_flat_ids_stay_inside(tmp_path) -> None:
    assert id_path(tmp_path, "speaker1/clip03", ".npz") == tmp_path / "speaker1" / "clip03.npz"
    assert id_path(tmp_path, "sub dir/clip é 1", "_peak.png") == tmp_path / "sub dir" / "clip é 1_peak.png"
    assert id_rel("speaker1/clip03", ".npz", folder="aus") == "aus/speaker1/clip03.npz"
    for cid in ("../../x", "/abs/x", ".", "..", "a/b"):  # flat: one file name for any id, reversible
        path = id_path(tmp_path, cid, ".json", nest=False)
        assert path.parent == tmp_path and not path.name.startswith(".")
    assert flat_name("../x") == "%2E.%2Fx" and flat_name("a/b") == "a%2Fb"
    with pytest.raises(UnsafePathError):
        id_path(tmp_path, "", ".json", nest=False)


def test_long_components_are_shortened_distinctly(tmp_path) -> None:
    a, b = "é" * 200 + "a", "é" * 200 + "b"  # 401 bytes each: over the 255-byte limit
    pa, pb = id_path(tmp_path, f"x/{a}", "_peak.png"), id_path(tmp_path, f"x/{b}", "_peak.png")
    assert pa != pb and pa.name.endswith("_peak.png") and pa.parent == tmp_path / "x"
    assert len(pa.name.encode()) <= MAX_COMPONENT_BYTES
    pa.parent.mkdir()
    pa.write_bytes(b"ok")  # the file system takes it
    assert len(id_path(tmp_path, a * 2, ".json", nest=False).name.encode()) <= MAX_COMPONENT_BYTES


def test_symlink_inside_the_folder_leading_out_is_refused(tmp_path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "sub")
    with pytest.raises(UnsafePathError, match="outside"):
        id_path(out, "sub/clip", ".png")
    with pytest.raises(UnsafePathError):
        inside(out, ["..", "x"])
    os.symlink(out / "loop", out / "loop")
    with pytest.raises(UnsafePathError):
        id_path(out, "loop/clip", ".png")


def test_ensure_folder_one_line_errors(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a folder"):
        ensure_folder(tmp_path / "file", "build --out")
    with pytest.raises(ConfigError, match="cannot create"):
        ensure_folder(tmp_path / "file" / "sub")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    with pytest.raises(ConfigError):
        ensure_folder(tmp_path / "loop")
    assert ensure_folder(tmp_path / "new" / "deep").is_dir()


def test_feature_cache_files_stay_in_the_cache(tmp_path) -> None:
    from emollm.features.cache import FeatureCache
    from emollm.features.extract import _error_path

    cache = FeatureCache(tmp_path / "cache")
    cache.fingerprints["video"] = "f" * 40
    for cid in ("../../../outside/x", "/etc/passwd", "..", "sub/clip"):
        for path in (cache.path(cid, "video"), cache._absent_path(cid, "video"), _error_path(cache, cid)):
            assert (tmp_path / "cache") in path.parents and path.parent.name != "sub", path
    folder = tmp_path / "cache" / "video" / ("f" * 16)
    folder.mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere.safetensors", folder / "clip.safetensors")  # an entry leading out of the cache
    with pytest.raises(UnsafePathError, match="outside"):
        cache.path("clip", "video")
