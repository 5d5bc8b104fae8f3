"""The explain page (``emollm serve --model RUN``): a clip in, its label and reasoning out, in the browser.

One :class:`~emollm.inference.Explainer` per server, made once when the app is made (:func:`explain_app`);
every request reuses it. One model answers one clip at a time: a request that comes while another is
being explained is answered "busy" (HTTP 503, JSON ``{"error", "hint"}``), never queued behind it.

Endpoints (all under the guards of :func:`emollm.web.install_guards`: a token off loopback, errors as JSON):

- ``GET /`` the page (``static/explain.html`` + ``explain.js`` / ``explain.css``: plain files, no CDN);
- ``GET /api/info`` the run (name, backbone, modalities, label set), the upload limit, whether it is busy;
- ``GET /api/clips`` the media files of ``--clips DIR`` (by name; none when no folder was given) and
  ``GET /api/clips/{name}`` one of them (only a name from that list: never a path from the request);
- ``POST /api/explain`` (multipart: ``file`` = an upload, or ``clip`` = a name from the list; ``task``
  ``emotion`` | ``reason``; optional ``subtitle``) -> one JSON object: the :class:`Explanation`'s fields
  (``clip`` is the user's file name), ``wall_s`` and ``images`` (the frames and face crops the model was
  fed, as JPEG data URLs);
- ``POST /api/explain/stream`` the same request, answered as Server-Sent Events while it runs:
  ``start``, ``analysed`` (the images, as soon as the clip is analysed), ``token`` (``{"text"}``: the
  answer as transformers' ``TextIteratorStreamer`` hands it over during ``model.generate``), then
  ``result`` (what ``/api/explain`` returns) or ``error`` (``{"error", "hint", "status"}``). A request
  refused before it starts (busy, bad file, too large) is a JSON error with a 4xx / 503 status instead.

An upload is written to a fresh temporary folder under a name the server chooses (``upload`` + the
file's extension), and the folder is removed when the request is done; the user's file name is only
shown, never used as a path. Errors name the user's file, never the temporary one.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) at definition.
import base64
import io
import json
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emollm.errors import EmollmError
from emollm.log import get_logger

log = get_logger(__name__)

STATIC = Path(__file__).with_name("static")
ASSETS = {"explain.js": "text/javascript", "explain.css": "text/css"}
MAX_FRAMES = 8  # sampled frames / face crops shown per clip
KEEPALIVE_S = 10.0  # an SSE comment this often while nothing else is sent (stage work, a slow model)
_MULTIPART_SLACK = 1 << 20  # the form's own bytes around the file
_CHUNK = 1 << 20


class Refused(Exception):
    """A request answered with ``{"error", "hint"}`` and an HTTP status (4xx, or 503 when busy)."""

    def __init__(self, status: int, error: str, hint: str | None = None):
        super().__init__(error)
        self.status, self.error, self.hint = status, error, hint

    def to_json(self) -> dict[str, Any]:
        return {"error": self.error, "hint": self.hint, "status": self.status}


@dataclass
class Job:
    """One request's clip: where it is read from, the name the user knows it by, and the scratch folder
    of an upload (removed when the request is done; None for a clip from ``--clips``)."""

    path: Path
    name: str
    task: str
    subtitle: str | None = None
    scratch: Path | None = None

    def cleanup(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    def scrub(self, value: Any) -> Any:
        """``value`` with every mention of the scratch file replaced by the user's file name."""
        if self.scratch is None:
            return value
        if isinstance(value, str):
            return value.replace(str(self.path), self.name).replace(str(self.scratch), "(upload)")
        if isinstance(value, Mapping):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        return value


# ------------------------------------------------------------------------------------------ images
def _jpeg(image: np.ndarray, max_side: int, *, box: tuple[float, float, float, float] | None = None) -> str:
    """An RGB uint8 image as a JPEG data URL, scaled to at most ``max_side``, with ``box`` drawn on it."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(image[..., :3]).astype(np.uint8), "RGB")
    scale = min(1.0, max_side / max(img.size))
    if scale < 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    if box is not None:
        x0, y0, x1, y1 = (v * scale for v in box)
        ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), outline=(255, 196, 0), width=max(2, round(img.width / 160)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _spread(items: Sequence[Any], n: int) -> list[Any]:
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def clip_views(cfg: Any, clip_record: Any, *, max_frames: int = MAX_FRAMES) -> dict[str, Any]:
    """What the model is fed of one analysed clip, as images (JPEG data URLs), from its
    :class:`~data_builders.clip.ClipRecord`'s own decode (nothing decoded again):

    ``peak`` the peak frame (the middle sampled frame when there is none: no face), with the face's box;
    ``face`` the aligned face crop at it; ``frames`` the frames the encoders sampled; ``crops`` the
    aligned face crops at those frames (the face encoder's input). Empty for an audio file."""
    from emollm.media.faces import align_face

    analysis, record = clip_record.analysis, clip_record.record or {}
    frames = getattr(analysis, "frames", None)
    if frames is None or not len(frames):
        return {}
    marks = analysis.landmarks

    def face_at(p: int) -> bool:
        return marks is not None and p < len(marks) and not np.isnan(marks[p, 0, 0])

    def when(p: int) -> dict[str, Any]:
        t = frames.timestamps_s[p] if p < len(frames.timestamps_s) else None
        return {"frame": int(frames.indices[p]), "time_s": None if t is None else round(float(t), 3)}

    size = cfg.media.face.crop_size
    encoder = list(analysis.encoder_positions or range(len(frames)))
    peak = (record.get("peak_frame") or {}).get("index")
    at = frames.indices.index(peak) if peak is not None and peak in frames.indices else None
    shown = at if at is not None else encoder[len(encoder) // 2]
    box = None
    if face_at(shown):
        (x0, y0), (x1, y1) = np.nanmin(marks[shown], axis=0), np.nanmax(marks[shown], axis=0)
        pad = 0.15 * max(x1 - x0, y1 - y0)
        box = (x0 - pad, y0 - 1.6 * pad, x1 + pad, y1 + pad)
    views: dict[str, Any] = {"peak": {"src": _jpeg(frames.array[shown], 640, box=box), "is_peak": at is not None,
                                      **when(shown)}}
    if face_at(shown):
        views["face"] = {"src": _jpeg(align_face(frames.array[shown], marks[shown], size), 224), **when(shown)}
    picks = _spread(encoder, max_frames)
    views["frames"] = [{"src": _jpeg(frames.array[p], 240), "face": face_at(p), "peak": p == at, **when(p)}
                       for p in picks]
    seen = [p for p in picks if face_at(p)]
    views["crops"] = [{"src": _jpeg(align_face(frames.array[p], marks[p], size), 128), **when(p)} for p in seen]
    return views


def view_feeds(cfg: Any) -> dict[str, list[str]]:
    """Which of the model's modalities read each kind of image: the peak frame (a ``visual`` encoder with
    ``frames: peak``), the sampled frames (other visual, ``video``) and the face crops (``face``)."""
    feeds: dict[str, list[str]] = {"peak": [], "frames": [], "crops": []}
    for name, enc in cfg.model.encoders.items():
        if enc.modality == "visual":
            feeds["peak" if (enc.options or {}).get("frames") == "peak" else "frames"].append(name)
        elif enc.modality == "video":
            feeds["frames"].append(name)
        elif enc.modality == "face":
            feeds["crops"].append(name)
    feeds["face"] = list(feeds["crops"])
    return feeds


# ------------------------------------------------------------------------------------------ the service
def _streamer_class() -> type:
    from transformers import TextIteratorStreamer

    class EventStreamer(TextIteratorStreamer):
        """transformers' ``TextIteratorStreamer`` whose text goes into the request's event queue as
        ``("token", text)``, so one queue carries the images, the text and the end, in order."""

        def __init__(self, tokenizer: Any, events: queue.Queue):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.events = events

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                self.events.put(("token", text))

    return EventStreamer


class ExplainService:
    """The page's state: the one :class:`Explainer`, the lock one clip holds while it is explained, the
    clips folder and the upload limit."""

    def __init__(self, explainer: Any, *, clips_dir: str | os.PathLike | None = None, max_upload_mb: float = 200,
                 generation: Mapping[str, Any] | None = None, load_s: float | None = None):
        from emollm.inference import generation_kwargs

        if max_upload_mb <= 0:
            raise EmollmError(f"the upload limit must be positive (got {max_upload_mb} MB)")
        self.explainer = explainer
        self.clips_dir = None if clips_dir is None else Path(clips_dir)
        if self.clips_dir is not None and not self.clips_dir.is_dir():
            raise EmollmError(f"--clips: no such folder: {clips_dir}", hint="a folder of video / image files")
        self.max_upload_mb = max_upload_mb
        self.max_bytes = int(max_upload_mb * (1 << 20))
        self.generation = {k: v for k, v in (generation or {}).items() if v is not None}
        gen = generation_kwargs(explainer.cfg.predict, **self.generation)  # a bad option fails now, not per request
        self.streams = gen["num_beams"] == 1  # transformers streams one sequence: beam search answers at once
        self.load_s = load_s
        self.lock = threading.Lock()
        self.feeds = view_feeds(explainer.cfg)

    # -- what the page reads -----------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        from data_builders.inputs import CLIP_EXTENSIONS
        from emollm.inference import TASKS

        ex = self.explainer
        backbone = str(ex.cfg.model.backbone.name_or_path or "")
        return {"run": Path(ex.run_dir).name if ex.run_dir is not None else None,
                "backbone": Path(backbone).name if backbone else None,
                "modalities": list(ex.modalities), "tasks": list(TASKS), "label_set": list(ex.label_set.labels),
                "feeds": self.feeds, "device": str(ex.device), "streaming": self.streams,
                "max_upload_mb": self.max_upload_mb, "extensions": list(CLIP_EXTENSIONS),
                "clips": self.clips_dir is not None, "busy": self.lock.locked(), "load_s": self.load_s}  # fmt: skip

    def clips(self) -> list[dict[str, Any]]:
        """The media files directly in the clips folder (not hidden), by name."""
        from data_builders.inputs import CLIP_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

        if self.clips_dir is None:
            return []
        out = []
        for path in sorted(self.clips_dir.iterdir(), key=lambda p: p.name.lower()):
            suffix = path.suffix.lower()
            if path.name.startswith(".") or suffix not in CLIP_EXTENSIONS or not path.is_file():
                continue
            kind = "video" if suffix in VIDEO_EXTENSIONS else "image" if suffix in IMAGE_EXTENSIONS else "audio"
            out.append({"name": path.name, "kind": kind, "size": path.stat().st_size})
        return out

    def clip_path(self, name: str) -> Path:
        """The clips folder's file called ``name``: looked up in the listing, never joined as a path."""
        if self.clips_dir is None:
            raise Refused(404, "this server has no clips folder", hint="upload a file, or start it with --clips DIR")
        if name not in {c["name"] for c in self.clips()}:
            raise Refused(404, f"no clip named '{name}' in the clips folder", hint="pick one from the list")
        return self.clips_dir / name

    # -- a request -------------------------------------------------------------------------
    async def take(self, request: Any) -> Job:
        """The request's clip (saved when uploaded), task and subtitle; :class:`Refused` when it cannot be
        explained (nothing is kept then)."""
        from starlette.datastructures import UploadFile

        from emollm.inference import TASKS

        if self.lock.locked():  # before the body is read: a large upload is not taken only to be refused
            raise self.busy()
        if not request.headers.get("content-type", "").startswith(("multipart/form-data",
                                                                   "application/x-www-form-urlencoded")):
            raise Refused(415, "send a form: multipart/form-data with a 'file' field, or a 'clip' name")
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            raise Refused(411, "the request has no Content-Length", hint="send the file in one request body")
        if int(length) > self.max_bytes + _MULTIPART_SLACK:
            raise self.too_large()
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as err:  # noqa: BLE001 - a malformed body is the client's, not a bug
            raise Refused(400, f"could not read the upload ({getattr(err, 'detail', err)})") from None
        try:
            task = str(form.get("task") or "reason")
            if task not in TASKS:
                raise Refused(400, f"unknown task '{task}' (valid: {', '.join(TASKS)})")
            subtitle = str(form.get("subtitle") or "").strip() or None
            upload, name = form.get("file"), str(form.get("clip") or "").strip()
            if isinstance(upload, UploadFile) and upload.filename:
                if name:
                    raise Refused(400, "send either a file or a clip name, not both")
                return await self._save(upload, task, subtitle)
            if name:
                return Job(self.clip_path(name), name, task, subtitle)
            raise Refused(400, "no clip given", hint="choose a video or image file, or one from the clips folder")
        finally:
            await form.close()

    async def _save(self, upload: Any, task: str, subtitle: str | None) -> Job:
        from data_builders.inputs import CLIP_EXTENSIONS

        shown = _display_name(upload.filename)
        suffix = Path(shown).suffix.lower()
        if suffix not in CLIP_EXTENSIONS:
            raise Refused(415, f"{shown}: not a clip type emollm reads ({suffix or 'no extension'})",
                          hint=f"upload a video, image or audio file: {' '.join(CLIP_EXTENSIONS)}")
        scratch = Path(tempfile.mkdtemp(prefix="emollm-serve-"))
        job = Job(scratch / f"upload{suffix}", shown, task, subtitle, scratch)
        try:
            size = 0
            with open(job.path, "wb") as fh:
                while chunk := await upload.read(_CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise self.too_large()
                    fh.write(chunk)
            if size == 0:
                raise Refused(400, f"{shown}: the file is empty", hint="choose a video or image file with content")
        except BaseException:
            job.cleanup()
            raise
        return job

    def busy(self) -> Refused:
        return Refused(503, "busy: the model is explaining another clip",
                       hint="one model answers one clip at a time; try again when it is done")

    def too_large(self) -> Refused:
        return Refused(413, f"the file is larger than this server's limit ({self.max_upload_mb:g} MB)",
                       hint="send a shorter clip, or start the server with a larger --max-upload-mb")

    def acquire(self, job: Job) -> None:
        if not self.lock.acquire(blocking=False):
            job.cleanup()
            raise self.busy()

    def explain(self, job: Job, events: queue.Queue | None = None) -> dict[str, Any]:
        """Explain ``job`` (the caller holds :attr:`lock`); its images go to ``events`` as soon as the clip is
        analysed and, when the answer streams, its text too. Raises :class:`Refused` for a clip that cannot
        be explained (the error names the user's file)."""
        images: dict[str, Any] = {}

        def look(result: Any, clip_record: Any) -> None:
            try:
                images.update(clip_views(self.explainer.cfg, clip_record))
            except Exception:  # noqa: BLE001 - the pictures are a look, the answer still comes
                log.warning("explain page: could not draw the frames of %s", job.name, exc_info=True)
            if events is not None:
                events.put(("analysed", {"images": images, "feeds": self.feeds}))

        streamer = _streamer_class()(self.explainer.processor.tokenizer, events) if events is not None and self.streams else None
        t0 = time.perf_counter()
        try:
            (result,) = self.explainer.explain_many([job.path], task=job.task, subtitles=[job.subtitle],
                                                    streamer=streamer, on_analysis=look, **self.generation)
        except EmollmError as err:
            raise Refused(400, job.scrub(err.message), job.scrub(err.hint)) from None
        if result.error:
            error = job.scrub(result.error)
            raise Refused(422, error if job.name in error else f"{job.name}: {error}",
                          hint="emollm could not analyse this file: is it a complete, playable video or image?")
        if events is not None and streamer is None and result.text:  # beam search: the answer comes at once
            events.put(("token", result.text))
        answer = job.scrub(result.to_json())
        answer.update(clip=job.name, id=Path(job.name).stem if job.scratch is not None else result.id, wall_s=round(time.perf_counter() - t0, 4), images=images, feeds=self.feeds)
        return answer


def _display_name(filename: str) -> str:
    """The user's file name as shown on the page: its last part, printable, at most 120 characters."""
    name = re.split(r"[\\/]", filename or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip() or "upload"
    return name if len(name) <= 120 else name[:80] + "…" + name[-39:]


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


# ------------------------------------------------------------------------------------------ the app
def explain_app(run_dir: str | os.PathLike, *, clips_dir: str | os.PathLike | None = None, device: str | None = None,
                max_upload_mb: float = 200, dtype: str | None = None, overrides: Sequence[str] = (),
                generation: Mapping[str, Any] | None = None) -> Any:
    """The explain page's FastAPI app for the run in ``run_dir``: its model is loaded here, once
    (:meth:`Explainer.load <emollm.inference.Explainer.load>`, as ``emollm infer`` loads it), and serves
    every request. ``clips_dir``: a folder whose media files the page offers by name; ``max_upload_mb``:
    the largest upload taken; ``dtype`` / ``overrides`` (run-config ``KEY=VALUE``) / ``generation``
    (``max_new_tokens``, ``temperature``, ``top_p``, ``num_beams``) as ``emollm infer`` takes them.
    Serve it with :func:`emollm.web.serve` (or :func:`emollm.web.running`), which adds the guards."""
    from emollm.inference import Explainer
    from emollm.web import require_web

    require_web()
    t0 = time.perf_counter()
    explainer = Explainer.load(run_dir, device=device, dtype=dtype, overrides=overrides)
    load_s = time.perf_counter() - t0
    log.info("explain page: %s loaded in %.1f s", run_dir, load_s)
    return explain_app_for(explainer, clips_dir=clips_dir, max_upload_mb=max_upload_mb, generation=generation,
                           load_s=load_s)


def explain_app_for(explainer: Any, *, clips_dir: str | os.PathLike | None = None, max_upload_mb: float = 200,
                    generation: Mapping[str, Any] | None = None, load_s: float | None = None) -> Any:
    """The explain page's app around an :class:`~emollm.inference.Explainer` already loaded (see
    :func:`explain_app`); several apps may share one explainer (and its lock is theirs each)."""
    from emollm.web import require_web

    require_web()
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    service = ExplainService(explainer, clips_dir=clips_dir, max_upload_mb=max_upload_mb, generation=generation,
                             load_s=load_s)
    app = FastAPI(title="emollm explain", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    def refused(err: Refused) -> JSONResponse:
        headers = {"Retry-After": "5"} if err.status == 503 else None
        return JSONResponse(err.to_json(), status_code=err.status, headers=headers)

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return FileResponse(STATIC / "explain.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in ASSETS:  # the page's own files only, by name
            return JSONResponse({"error": f"no such file: {name}", "hint": None}, status_code=404)
        return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return service.info()

    @app.get("/api/clips")
    def clips() -> dict[str, Any]:
        return {"clips": service.clips(), "folder": service.clips_dir is not None}

    @app.get("/api/clips/{name}")
    def clip_file(name: str) -> Response:
        try:
            return FileResponse(service.clip_path(name))
        except Refused as err:
            return refused(err)

    @app.post("/api/explain")
    async def explain(request: Request) -> Response:
        try:
            job = await service.take(request)
            service.acquire(job)
        except Refused as err:
            return refused(err)

        def work() -> dict[str, Any]:
            try:
                return service.explain(job)
            finally:
                service.lock.release()
                job.cleanup()

        try:
            return JSONResponse(await run_in_threadpool(work))
        except Refused as err:
            return refused(err)

    @app.post("/api/explain/stream")
    async def explain_stream(request: Request) -> Response:
        try:
            job = await service.take(request)
            service.acquire(job)
        except Refused as err:
            return refused(err)
        events: queue.Queue = queue.Queue()

        def work() -> None:  # its own thread: it runs to the end (and frees the lock) even if the page goes away
            last: tuple[str, Any] = ("error", {"error": "interrupted", "hint": "see the server's log", "status": 500})
            try:
                last = ("result", service.explain(job, events))
            except Refused as err:
                last = ("error", err.to_json())
            except Exception as err:  # noqa: BLE001 - reported to the page as one line, logged in full
                log.exception("explain page: unexpected error on %s", job.name)
                last = ("error", {"error": f"unexpected {type(err).__name__}", "hint": "see the server's log",
                                  "status": 500})
            finally:  # the model free and the upload gone before the page hears the end
                service.lock.release()
                job.cleanup()
                events.put(last)

        threading.Thread(target=work, name="emollm-explain", daemon=True).start()

        def stream() -> Iterator[str]:
            t0 = time.perf_counter()
            yield _sse("start", {"clip": job.name, "task": job.task, "streaming": service.streams})
            chunks, first = 0, None
            while True:
                try:
                    kind, data = events.get(timeout=KEEPALIVE_S)
                except queue.Empty:
                    yield ": working\n\n"
                    continue
                if kind == "token":
                    chunks += 1
                    first = first if first is not None else time.perf_counter() - t0
                    yield _sse("token", {"text": data})
                elif kind == "analysed":
                    yield _sse("analysed", data)
                else:
                    if kind == "result":  # its images went with "analysed" already
                        data.pop("images", None)
                        data["stream"] = {"chunks": chunks, "first_token_s": None if first is None else round(first, 4)}
                    yield _sse(kind, data)
                    return

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


__all__ = ["ExplainService", "Refused", "clip_views", "explain_app", "explain_app_for", "view_feeds"]
