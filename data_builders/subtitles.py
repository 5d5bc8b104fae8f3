"""Lexical subtitles: openai-whisper on the clip's 16 kHz mono audio (numpy, no system ffmpeg).

Model by name (``base``, ``small``, ... from the local whisper cache, ``~/.cache/whisper`` or
``$XDG_CACHE_HOME/whisper``; nothing is downloaded when it is there) or by a ``.pt`` path
(``whisper.load_model`` reads it with ``torch.load(..., weights_only=True)``). A subtitles CSV
(``data.subtitles_csv``) wins over ASR for the clips it lists.

Silent audio is never transcribed (no invented words): the caller checks energy first
(:func:`is_silent`); segments whisper itself marks as no-speech, and repetition loops (gzip
compression ratio above 2.4, whisper's own hallucination test), are dropped (flag
``asr_repetition_dropped``).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emollm.errors import CueError
from emollm.log import get_logger

log = get_logger(__name__)

_MODELS: dict[str, Any] = {}
_LOCK = threading.Lock()


@dataclass
class Transcript:
    text: str | None
    language: str | None
    model: str
    flags: list[str]


def model_version(name_or_path: str) -> str:
    """What identifies the weights: the name, or the file's path + size + mtime."""
    p = Path(name_or_path)
    if p.is_file():
        st = p.stat()
        return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return name_or_path


def check_whisper(name_or_path: str) -> None:
    """Fail early (CueError) when the model cannot be had offline; loads nothing (no torch work in
    the parent before worker processes start)."""
    if model_version(name_or_path) in _MODELS:
        return
    try:
        import whisper
    except ImportError:
        from emollm.errors import MissingDependencyError

        raise MissingDependencyError("openai-whisper", "asr", "build.asr=whisper") from None
    if Path(name_or_path).is_file():
        return
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"
    known = whisper.available_models()
    if name_or_path not in known:
        raise CueError(f"build.whisper_model '{name_or_path}' is neither a file nor a whisper model name",
                       hint=f"names: {', '.join(known)}; or give the path of a .pt checkpoint")
    url = whisper._MODELS[name_or_path]
    if not (root / os.path.basename(url)).is_file():
        raise CueError(f"whisper model '{name_or_path}' is not in the local cache ({root})",
                       hint="put the checkpoint there, or set build.whisper_model to a .pt path")


def load_whisper(name_or_path: str) -> Any:
    """The whisper model (cached per process); CueError when it cannot be had offline."""
    key = model_version(name_or_path)
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key]
        check_whisper(name_or_path)
        import whisper

        try:
            model = whisper.load_model(name_or_path, device="cpu")
        except (RuntimeError, OSError, KeyError, ValueError) as exc:
            raise CueError(f"build.whisper_model '{name_or_path}' could not be loaded: {exc}") from None
        _MODELS[key] = model
        return model


def register_model(name: str, model: Any) -> None:
    """Use an in-memory model under ``name`` (tests, notebooks)."""
    with _LOCK:
        _MODELS[model_version(name)] = model


def is_silent(audio: np.ndarray, silence_dbfs: float, sr: int = 16000) -> bool:
    x = np.asarray(audio, dtype=np.float64)
    if x.size == 0:
        return True
    n = max(1, sr // 20)
    frames = x[: len(x) // n * n].reshape(-1, n) if len(x) >= n else x[None, :]
    peak = 20 * np.log10(np.sqrt((frames**2).mean(axis=1)).max() + 1e-12)
    return bool(peak < silence_dbfs)


def transcribe(audio: np.ndarray, model_name: str, *, language: str | None = None,
               no_speech_threshold: float = 0.6, compression_ratio_threshold: float = 2.4) -> Transcript:
    """Whisper on 16 kHz mono float32 audio; greedy (temperature 0), no conditioning on earlier text."""
    model = load_whisper(model_name)
    x = np.ascontiguousarray(audio, dtype=np.float32)
    with _LOCK:  # one model per process; torch threads do the parallel work
        result = model.transcribe(x, language=language, temperature=0.0, fp16=False, verbose=None,
                                  condition_on_previous_text=False, no_speech_threshold=no_speech_threshold)
    segments = [s for s in result.get("segments", []) if s.get("no_speech_prob", 0.0) < no_speech_threshold]
    # whisper's own hallucination test: highly compressible text is a repetition loop, not speech
    kept = [s for s in segments if s.get("compression_ratio", 0.0) <= compression_ratio_threshold]
    text = " ".join(s["text"].strip() for s in kept if s["text"].strip()).strip()
    flags = [] if text else ["no_speech_detected"]
    if len(kept) < len(segments):
        flags.append("asr_repetition_dropped")
    return Transcript(text or None, result.get("language"), model_name, flags)


__all__ = ["Transcript", "check_whisper", "is_silent", "load_whisper", "model_version", "register_model", "transcribe"]
