"""``emollm review serve``: the review queue of a built dataset as a local web page.

One page (``static/review.html`` + ``review.js`` + ``review.css``, no build step, nothing from a CDN)
over JSON endpoints:

- ``GET /api/queue``: the clips to review, in ``annotations.jsonl`` order. ``queue="uncertain"``: what
  ``emollm review export`` selects (:func:`data_builders.review.review_reasons`: low confidence below
  ``threshold``, label disputed, cues disagree, reasoning filtered) and not yet reviewed;
  ``queue="all"``: every clip, reviewed or not. With the label set, the reviewer, where to start (the
  first undecided clip) and the progress (reviewed / in queue).
- ``GET /api/clip/{id}``: one record as the page shows it (peak frame, AUs at the peak, subtitle, tone,
  expression, descriptions, reasoning, each cue's vote, the fused confidence, review state).
- ``POST /api/decision`` ``{"id", "action": "accept" | "correct", "label"?, "note"?}``: through
  :func:`data_builders.review.apply_decisions`, the code path of ``emollm review import`` (same files,
  same lock, same validation: a label outside the set is refused, 400, and logged in
  ``review_errors.jsonl``). ``accept``: the pseudo-label becomes the label. Skipping writes nothing.
- ``GET /api/media/{id}``: the record's own media file (HTTP range requests, for ``<video>``).
- ``GET /api/image/{peak|face|aus|strip}/{id}``: PNGs made on demand (the review export's peak frame and
  AU chart makers, an aligned face crop at the peak, a strip of frames) and cached under
  ``DATASET_DIR/review/web/<kind>/<id>.<fingerprint>.png``.

Ids in URLs are percent-encoded (``/``, spaces, any script); a request's id is only ever looked up
among the dataset's records (unknown: 404), never turned into a path: the media route serves the file
the record names, and the image cache paths go through :mod:`emollm.paths` (an id that would leave the
cache folder gets no image and a message saying why).
"""

import getpass
import hashlib
import json
import mimetypes
import os
import threading
import uuid
from pathlib import Path
from typing import Any

from emollm.errors import ConfigError, EmollmError, UnsafePathError
from emollm.log import get_logger

log = get_logger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
QUEUES = ("uncertain", "all")
IMAGE_KINDS = ("peak", "face", "aus", "strip")
CACHE_DIR = "review/web"
TEXT_FIELDS = ("subtitle", "tone", "expression", "visual_description", "coarse_description", "reasoning")
_STATIC_FILES = {"review.js": "text/javascript", "review.css": "text/css"}


def default_reviewer() -> str:
    """The OS user's name (``reviewer`` when it cannot be had, e.g. in a container without one)."""
    try:
        return getpass.getuser() or "reviewer"
    except Exception:  # noqa: BLE001 - getpass raises OSError / KeyError where no user name exists
        return "reviewer"


class _HTTPError(EmollmError):
    def __init__(self, status: int, message: str, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status = status


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:12]


class ReviewState:
    """The dataset behind one review app: the records (re-read when ``annotations.jsonl`` changes, so
    another reviewer's decisions show up), the label set, and the image cache."""

    def __init__(self, dataset_dir: str | os.PathLike[str], *, queue: str = "uncertain", threshold: float = 0.5,
                 reviewer: str | None = None):  # fmt: skip
        from data_builders.review import _dataset_label_set

        if queue not in QUEUES:
            raise ConfigError(f"unknown review queue {queue!r}", hint=f"one of {', '.join(QUEUES)}")
        self.root = Path(dataset_dir)
        if not (self.root / "annotations.jsonl").is_file():
            raise ConfigError(f"{self.root} holds no annotations.jsonl",
                              hint="give a dataset folder built by `emollm build`")  # fmt: skip
        self.queue, self.threshold = queue, float(threshold)
        self.reviewer = reviewer or default_reviewer()
        self.label_set = _dataset_label_set(self.root)
        self._lock = threading.Lock()
        self._images = threading.Lock()  # matplotlib and the face detector are not thread-safe
        self._stamp: tuple[int, int, int] | None = None
        self._records: list[dict[str, Any]] = []
        self._by_id: dict[str, dict[str, Any]] = {}
        self._detector = None
        self.records()  # a broken annotations.jsonl fails here, at start, not at the first request

    # ------------------------------------------------------------------------------------ records
    def records(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        from emollm.dataset.record import read_annotations

        path = self.root / "annotations.jsonl"
        with self._lock:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp != self._stamp:
                self._records = read_annotations(path)
                self._by_id = {r["id"]: r for r in self._records}
                self._stamp = stamp
            return self._records, self._by_id

    def record(self, clip_id: str) -> dict[str, Any]:
        """The record of ``clip_id``; 404 for an id the dataset does not hold (the only way a request's
        id reaches anything)."""
        rec = self.records()[1].get(clip_id)
        if rec is None:
            raise _HTTPError(404, f"unknown clip id {clip_id!r} (not in annotations.jsonl)",
                             hint="reload the page: the queue lists the dataset's clips")  # fmt: skip
        return rec

    # -------------------------------------------------------------------------------------- queue
    def queue_view(self) -> dict[str, Any]:
        from data_builders.review import review_reasons

        records, _ = self.records()
        items, reviewed, total = [], 0, 0
        for rec in records:
            reasons = review_reasons(rec, self.threshold)
            state = (rec.get("review") or {}).get("state", "unreviewed")
            if self.queue == "uncertain" and not reasons:
                continue
            total += 1
            if state != "unreviewed":
                reviewed += 1
                if self.queue == "uncertain":
                    continue  # decided (here, by another reviewer, by an import): not in this queue
            items.append({"id": rec["id"], "reasons": reasons, "state": state, "label": rec.get("label"),
                          "pseudo_label": rec.get("pseudo_label"),
                          "pseudo_label_confidence": rec.get("pseudo_label_confidence")})  # fmt: skip
        start = next((i for i, it in enumerate(items) if it["state"] == "unreviewed"), 0)
        return {"dataset": self.root.resolve().name, "queue": self.queue, "threshold": self.threshold,
                "reviewer": self.reviewer, "labels": list(self.label_set.labels), "items": items, "start": start,
                "progress": self.progress()}  # fmt: skip

    def progress(self) -> dict[str, int]:
        """``reviewed`` of ``total`` clips in the queue (uncertain: the clips with a reason to review,
        reviewed or not; all: every clip), ``left`` = not yet reviewed."""
        from data_builders.review import review_reasons

        total = reviewed = 0
        for rec in self.records()[0]:
            if self.queue == "uncertain" and not review_reasons(rec, self.threshold):
                continue
            total += 1
            reviewed += (rec.get("review") or {}).get("state", "unreviewed") != "unreviewed"
        return {"reviewed": reviewed, "total": total, "left": total - reviewed}

    # --------------------------------------------------------------------------------------- clip
    def clip_view(self, clip_id: str) -> dict[str, Any]:
        from data_builders.review import _votes_cell, review_reasons

        rec = self.record(clip_id)
        media = rec.get("media") or {}
        kind = media.get("kind") or "video"
        peak = rec.get("peak_frame") or {}
        has_peak = peak.get("index") is not None and bool(rec.get("has_video", True)) and kind != "audio"
        try:
            self._cache_path("peak", rec)
            image_error = None
        except UnsafePathError as exc:
            image_error = f"no pictures for this id: {exc.message}"
        votes = [{"cue": cue, "label": v.get("label"), "arousal": (v.get("detail") or {}).get("arousal"),
                  "strength": v.get("strength"), "weight": v.get("weight")}
                 for cue, v in (rec.get("cue_votes") or {}).items() if isinstance(v, dict)]  # fmt: skip
        review = rec.get("review") or {"state": "unreviewed"}
        return {
            "id": rec["id"],
            "media": {"path": media.get("path"), "kind": kind, "type": mimetypes.guess_type(str(media.get("path")))[0]},
            "duration_s": rec.get("duration_s"), "fps": rec.get("fps"), "num_frames": rec.get("num_frames"),
            "has_video": rec.get("has_video"), "has_audio": rec.get("has_audio"),
            "peak_frame": rec.get("peak_frame"), "aus_at_peak": rec.get("aus_at_peak"),
            "aus_present_at_peak": rec.get("aus_present_at_peak") or [],
            "pseudo_label": rec.get("pseudo_label"), "pseudo_label_confidence": rec.get("pseudo_label_confidence"),
            "pseudo_label_distribution": rec.get("pseudo_label_distribution"),
            "label": rec.get("label"), "rule_label": rec.get("rule_label"), "cue_votes": votes,
            "cue_votes_text": _votes_cell(rec), "cue_agreement": rec.get("cue_agreement"),
            **{f: rec.get(f) for f in TEXT_FIELDS},
            "reasoning_filter": rec.get("reasoning_filter"), "split": rec.get("split"),
            "flags": rec.get("flags") or [], "reasons": review_reasons(rec, self.threshold),
            "review": review,
            "images": {"peak": has_peak and not image_error, "face": has_peak and not image_error,
                       "aus": bool(rec.get("aus_at_peak")) and not image_error,
                       "strip": kind == "video" and bool(rec.get("has_video", True)) and not image_error},
            "image_error": image_error,
        }  # fmt: skip

    # ----------------------------------------------------------------------------------- decision
    def decide(self, body: Any) -> dict[str, Any]:
        from data_builders.review import apply_decisions

        if not isinstance(body, dict):
            raise _HTTPError(400, "a decision is a JSON object", hint='{"id": ..., "action": "accept"}')
        clip_id, action = body.get("id"), body.get("action")
        if not isinstance(clip_id, str):
            raise _HTTPError(400, "the decision has no clip id")
        rec = self.record(clip_id)
        if action == "accept":
            label = rec.get("pseudo_label") or rec.get("label")
            if not label:
                raise _HTTPError(400, f"clip {clip_id!r} has no pseudo-label to accept",
                                 hint="correct it: choose a label")  # fmt: skip
        elif action == "correct":
            label = body.get("label")
            if not isinstance(label, str) or not label.strip():
                raise _HTTPError(400, "a correction needs a label", hint=f"one of {list(self.label_set.labels)}")
        else:
            raise _HTTPError(400, f"unknown action {action!r}",
                             hint="accept or correct (skipping writes nothing)")  # fmt: skip
        note = body.get("note")
        row = {"id": clip_id, "label": label, "note": note if isinstance(note, str) else None}
        res = apply_decisions(self.root, [row], reviewer=self.reviewer, source=f"web:{self.reviewer}",
                              append_errors=True)  # fmt: skip
        if res.errors:
            err = res.errors[0]["error"]
            hint = "choose a label of the dataset's label set (keys 1-9)" if "label set" in err else None
            raise _HTTPError(400, err, hint=hint)
        rec = self.record(clip_id)
        return {"id": clip_id, "action": action, "label": rec.get("label"), "review": rec.get("review"),
                "progress": self.progress()}  # fmt: skip

    # -------------------------------------------------------------------------------------- media
    def media_path(self, clip_id: str) -> Path:
        """The record's own media file (only a file with a clip extension, only one that exists)."""
        from data_builders.inputs import CLIP_EXTENSIONS

        rec = self.record(clip_id)
        rel = (rec.get("media") or {}).get("path")
        if not isinstance(rel, str) or not rel:
            raise _HTTPError(404, f"clip {clip_id!r} names no media file")
        path = self.root / rel
        if path.suffix.lower() not in CLIP_EXTENSIONS:
            raise _HTTPError(403, f"clip {clip_id!r}: {rel} is not a media file this page serves",
                             hint=f"extensions: {' '.join(CLIP_EXTENSIONS)}")  # fmt: skip
        if not path.is_file():
            raise _HTTPError(404, f"the media file of clip {clip_id!r} is missing ({rel})",
                             hint="the dataset's media paths are relative to the dataset folder")  # fmt: skip
        return path

    # ------------------------------------------------------------------------------------- images
    def _cache_path(self, kind: str, rec: dict[str, Any]) -> Path:
        from emollm.paths import id_path

        media = rec.get("media") or {}
        try:
            stamp = os.stat(self.root / str(media.get("path"))).st_mtime_ns
        except OSError:
            stamp = None
        inputs = [kind, media.get("path"), stamp, rec.get("peak_frame"), rec.get("num_frames")]
        if kind == "aus":
            inputs += [rec.get("aus_at_peak"), rec.get("aus_present_at_peak"), rec.get("pseudo_label"),
                       rec.get("pseudo_label_confidence")]  # fmt: skip
        return id_path(self.root / CACHE_DIR / kind, rec["id"], f".{_fingerprint(*inputs)}.png")

    def image(self, kind: str, clip_id: str) -> Path:
        """The cached PNG of ``kind`` for the clip, made first when missing."""
        if kind not in IMAGE_KINDS:
            raise _HTTPError(404, f"unknown picture {kind!r}", hint=f"one of {', '.join(IMAGE_KINDS)}")
        rec = self.record(clip_id)
        try:
            path = self._cache_path(kind, rec)
        except UnsafePathError as exc:
            raise _HTTPError(400, f"no pictures for this id: {exc.message}") from None
        if path.is_file():
            return path
        with self._images:
            if path.is_file():
                return path
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{uuid.uuid4().hex}.tmp.png")
            try:
                self._make(kind, rec, tmp)
                os.replace(tmp, path)
            except _HTTPError:
                raise
            except Exception as exc:  # noqa: BLE001 - a clip that cannot be decoded gets a message, not a broken page
                what = {"peak": "the peak frame", "face": "the face crop", "aus": "the AU chart",
                        "strip": "the frame strip"}[kind]  # fmt: skip
                log.warning("review page: %s of %r: %s: %s", what, rec["id"], type(exc).__name__, exc)
                raise _HTTPError(422, f"{what} cannot be made: {type(exc).__name__}: {getattr(exc, 'message', exc)}",
                                 hint="the clip may be unreadable; the label can still be decided") from None  # fmt: skip
            finally:
                tmp.unlink(missing_ok=True)
        return path

    def _make(self, kind: str, rec: dict[str, Any], path: Path) -> None:
        from data_builders.review import _au_chart, _thumbnail

        if kind == "peak":
            _thumbnail(self.root, rec, path)
        elif kind == "aus":
            if not rec.get("aus_at_peak"):
                raise _HTTPError(404, f"clip {rec['id']!r} has no AU intensities at its peak")
            _au_chart(rec, path, dpi=105)  # 630 px wide: the page shows it at about that size
        elif kind == "face":
            self._face_crop(rec, path)
        else:
            self._frame_strip(rec, path)

    def _face_crop(self, rec: dict[str, Any], path: Path) -> None:
        """The face at the peak frame, aligned as the encoders see it (the dataset's detector and crop size;
        of several faces, the one closest in size to the record's main face)."""
        from PIL import Image

        from emollm import config as cfglib
        from emollm.media import read_frames
        from emollm.media.faces import align_face
        from emollm.media.from_config import face_detector_for

        peak = rec.get("peak_frame") or {}
        if peak.get("index") is None:
            raise ValueError("no peak frame (no face)")
        cfg_path = self.root / "config.yaml"
        cfg = cfglib.load(cfg_path if cfg_path.is_file() else None)
        frame = read_frames(self.root / rec["media"]["path"], [int(peak["index"])], max_side=1280).array[0]
        if self._detector is None:
            self._detector = face_detector_for(cfg.media.face)
        faces = self._detector.detect(frame)
        if not faces:
            raise ValueError("no face found on the peak frame")
        want = ((rec.get("face_track") or {}).get("main_face_px")) or 0.0
        face = min(faces, key=lambda f: abs((f.box[2] - f.box[0]) - want)) if want else faces[0]
        Image.fromarray(align_face(frame, face.landmarks, int(cfg.media.face.crop_size))).save(path)

    def _frame_strip(self, rec: dict[str, Any], path: Path) -> None:
        """Frames spread over the clip, the peak among them (outlined in red)."""
        import numpy as np
        from PIL import Image, ImageOps

        from emollm.media import read_frames

        media = self.root / rec["media"]["path"]
        total = int(rec.get("num_frames") or 0)
        peak = (rec.get("peak_frame") or {}).get("index")
        if total > 1:
            picks = {int(round(x)) for x in np.linspace(0, total - 1, 7)}
            if peak is not None:
                picks.add(int(peak))
            frames = read_frames(media, sorted(picks), max_side=160)
        else:
            frames = read_frames(media, num_frames=7, max_side=160)
        tiles = []
        for arr, idx in zip(frames.array, frames.indices, strict=True):
            tile = Image.fromarray(arr)
            colour = "#c0392b" if peak is not None and idx == int(peak) else "#2b2f36"
            tiles.append(ImageOps.expand(tile, border=3, fill=colour))
        strip = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)), "#2b2f36")
        x = 0
        for t in tiles:
            strip.paste(t, (x, 0))
            x += t.width
        strip.save(path)


def review_app(dataset_dir: str | os.PathLike[str], *, queue: str = "uncertain", threshold: float = 0.5,
               reviewer: str | None = None):  # noqa: ANN201 - fastapi.FastAPI, imported lazily
    """The review page of ``dataset_dir`` as a FastAPI app (see the module docstring). Run it with
    :func:`emollm.web.serve` (``what="review"``) or, in a test, :func:`emollm.web.running`. ``reviewer``:
    the name the decisions are recorded under (default: the OS user)."""
    from emollm.web import install_guards, require_web

    require_web()
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    state = ReviewState(dataset_dir, queue=queue, threshold=threshold, reviewer=reviewer)
    app = FastAPI(title="emollm review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.review = state
    install_guards(app, None)  # errors as JSON; `serve` adds the token check off loopback

    @app.exception_handler(_HTTPError)
    async def _http_error(request: Request, exc: _HTTPError):  # noqa: ANN202
        return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _not_found(request: Request, exc: StarletteHTTPException):  # noqa: ANN202
        return JSONResponse({"error": str(exc.detail), "hint": None}, status_code=exc.status_code)

    nocache = {"Cache-Control": "no-store"}

    @app.get("/")
    def page():  # noqa: ANN202
        return FileResponse(STATIC / "review.html", media_type="text/html", headers=nocache)

    @app.get("/static/{name}")
    def static(name: str):  # noqa: ANN202
        if name not in _STATIC_FILES:  # only the page's own files, named here
            raise _HTTPError(404, f"no static file {name!r}")
        return FileResponse(STATIC / name, media_type=_STATIC_FILES[name], headers=nocache)

    @app.get("/api/queue")
    def get_queue() -> JSONResponse:
        return JSONResponse(state.queue_view(), headers=nocache)

    @app.get("/api/clip/{clip_id:path}")
    def get_clip(clip_id: str) -> JSONResponse:
        return JSONResponse(state.clip_view(clip_id), headers=nocache)

    @app.post("/api/decision")
    async def post_decision(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            raise _HTTPError(400, "the decision is not JSON", hint='{"id": ..., "action": "accept"}') from None
        from starlette.concurrency import run_in_threadpool

        return JSONResponse(await run_in_threadpool(state.decide, body))

    @app.get("/api/media/{clip_id:path}")
    def get_media(clip_id: str):  # noqa: ANN202
        path = state.media_path(clip_id)
        return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")

    @app.get("/api/image/{kind}/{clip_id:path}")
    def get_image(kind: str, clip_id: str):  # noqa: ANN202
        return FileResponse(state.image(kind, clip_id), media_type="image/png")

    return app


__all__ = ["IMAGE_KINDS", "QUEUES", "ReviewState", "default_reviewer", "review_app"]
