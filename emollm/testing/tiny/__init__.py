"""Tiny LLMs and encoders, built in-process and saved on disk exactly like hub checkpoints.

>>> from emollm.testing.tiny import build_tiny_models
>>> tiny = build_tiny_models()                  # all of them, once per cache dir
>>> AutoModelForCausalLM.from_pretrained(tiny.llama3)
>>> AutoFeatureExtractor.from_pretrained(tiny["hubert"])

Nothing here reaches the network: tokenizers are trained on a corpus generated in code, weights are
random with a fixed seed per model, and every file is the same byte for byte on every build (same
library versions). Each model is built into a temporary directory next to its final place, a marker file
(``emollm-fixture.json``, with the SHA-256 of every file) is written last, and the directory is renamed
into place under a per-model file lock: an interrupted build never leaves a directory that passes as
complete, and concurrent callers (pytest-xdist workers, two processes) build each model once.

See docs/fixtures.md for the sizes, the special-token ids and the transformers-5 notes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from emollm.errors import EmollmError, FixtureError
from emollm.log import get_logger, progress
from emollm.testing.tiny import encoders, llms

log = get_logger(__name__)

#: Bump when anything that changes the built files changes; it names the default cache subfolder.
FIXTURE_VERSION = "v1"
#: Written last into each model directory; its presence (with the right version) means "complete".
MARKER = "emollm-fixture.json"
#: How long a caller waits for another process that is building the same model.
LOCK_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class TinySpec:
    """One tiny model: how to build it and how to load it."""

    name: str
    kind: str  # "llm" | "audio" | "image" | "face" | "video" | "text"
    hidden_size: int
    model_loader: str  # the transformers Auto class that loads the model by path
    processor_loader: str  # the Auto class that loads its tokenizer / processor by path
    build: Callable[[Path, int], None]

    @property
    def seed(self) -> int:
        """The torch seed of this model's weights (stable: derived from the name)."""
        return zlib.crc32(f"emollm-tiny/{self.name}".encode()) & 0x7FFFFFFF


_LM, _TOK = "AutoModelForCausalLM", "AutoTokenizer"
_FE, _IP = "AutoFeatureExtractor", "AutoImageProcessor"

SPECS: dict[str, TinySpec] = {
    spec.name: spec
    for spec in (
        TinySpec("llama2", "llm", llms.LLAMA2.hidden_size, _LM, _TOK, llms.build_llama2),
        TinySpec("mistral", "llm", llms.MISTRAL.hidden_size, _LM, _TOK, llms.build_mistral),
        TinySpec("llama3", "llm", llms.LLAMA3.hidden_size, _LM, _TOK, llms.build_llama3),
        TinySpec("hubert", "audio", encoders.HUBERT.hidden_size, "AutoModel", _FE, encoders.build_hubert),
        TinySpec("wav2vec2", "audio", encoders.WAV2VEC2.hidden_size, "AutoModel", _FE, encoders.build_wav2vec2),
        TinySpec(
            "whisper_encoder",
            "audio",
            encoders.WHISPER_ENCODER.hidden_size,
            "AutoModel",
            _FE,
            encoders.build_whisper_encoder,
        ),
        TinySpec(
            "clip_vision", "image", encoders.CLIP_VISION.hidden_size, "AutoModel", _IP, encoders.build_clip_vision
        ),
        TinySpec("vit", "image", encoders.VIT.hidden_size, "AutoModel", _IP, encoders.build_vit),
        TinySpec("vit_mae", "face", encoders.VIT_MAE.hidden_size, "AutoModel", _IP, encoders.build_vit_mae),
        TinySpec("videomae", "video", encoders.VIDEOMAE.hidden_size, "AutoModel", _IP, encoders.build_videomae),
        TinySpec("bert", "text", encoders.BERT.hidden_size, "AutoModel", _TOK, encoders.build_bert),
    )
}
TINY_MODEL_NAMES: tuple[str, ...] = tuple(SPECS)
LLM_NAMES: tuple[str, ...] = tuple(n for n, s in SPECS.items() if s.kind == "llm")
ENCODER_NAMES: tuple[str, ...] = tuple(n for n, s in SPECS.items() if s.kind != "llm")


class TinyModels(Mapping[str, Path]):
    """Name -> model directory, also readable as attributes (``tiny.llama2``)."""

    def __init__(self, root: Path, paths: Mapping[str, Path]):
        self.root = root
        self._paths = dict(paths)

    def __getitem__(self, name: str) -> Path:
        try:
            return self._paths[name]
        except KeyError:
            raise KeyError(f"tiny model {name!r} was not built here; built: {', '.join(self._paths)}") from None

    def __getattr__(self, name: str) -> Path:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._paths[name]
        except KeyError:
            raise AttributeError(f"tiny model {name!r} was not built here; built: {', '.join(self._paths)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *self._paths]

    def __repr__(self) -> str:
        return f"TinyModels(root={str(self.root)!r}, names={list(self._paths)})"


def default_cache_dir() -> Path:
    """``$EMOLLM_CACHE/tiny-models/<FIXTURE_VERSION>`` (``~/.cache/emollm`` when the variable is unset)."""
    from emollm import testing

    return testing.cache_dir(f"tiny-models/{FIXTURE_VERSION}")


def build_tiny_models(cache_dir: Path | str | None = None, names: Iterable[str] | None = None) -> TinyModels:
    """Build (once) and return the tiny models ``names`` (default: all of them) under ``cache_dir``.

    A model whose directory already holds a valid marker is not rebuilt. Raises :class:`FixtureError`
    for an unknown name or a failed build.
    """
    try:
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FixtureError(
            f"cannot create the tiny-model cache directory: {exc}",
            hint="pass a writable cache_dir, or set EMOLLM_CACHE to a writable folder",
        ) from None
    selected = _select(names)
    todo = [name for name in selected if not is_complete(root / name, name)]
    if todo:
        log.info("building tiny models %s in %s", ", ".join(todo), root)
        from emollm.testing.tiny._common import quiet_transformers

        with quiet_transformers():
            for name in progress(todo, desc="tiny models", unit="model"):
                _ensure(root, SPECS[name])
    return TinyModels(root, {name: root / name for name in selected})


def tiny_model_path(name: str, cache_dir: Path | str | None = None) -> Path:
    """The directory of one tiny model, built first if needed."""
    return build_tiny_models(cache_dir, [name])[name]


def is_complete(path: Path, name: str | None = None) -> bool:
    """Whether ``path`` is a finished tiny model of this fixture version (marker present, files present)."""
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("fixture_version") != FIXTURE_VERSION:
        return False
    if name is not None and marker.get("name") != name:
        return False
    files = marker.get("files")
    return isinstance(files, dict) and bool(files) and all((path / rel).is_file() for rel in files)


def file_hashes(path: Path) -> dict[str, str]:
    """SHA-256 of every file under ``path`` except the marker, by relative POSIX path, sorted."""
    out = {}
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel != MARKER:
            out[rel] = _sha256(file)
    return out


# ---- building ------------------------------------------------------------------------------------------


def _select(names: Iterable[str] | None) -> list[str]:
    if names is None:
        return list(TINY_MODEL_NAMES)
    if isinstance(names, str):
        names = [names]
    selected: list[str] = []
    for name in names:
        if name not in SPECS:
            raise FixtureError(f"unknown tiny model {name!r}", hint=f"choose from: {', '.join(TINY_MODEL_NAMES)}")
        if name not in selected:
            selected.append(name)
    return selected


def _ensure(root: Path, spec: TinySpec) -> Path:
    from filelock import FileLock, Timeout

    final = root / spec.name
    try:
        with FileLock(str(root / f".{spec.name}.lock"), timeout=LOCK_TIMEOUT_S):
            if is_complete(final, spec.name):  # another process finished it while we waited
                return final
            _clear_leftovers(root, spec.name)
            _build_into(root, spec)
    except Timeout:
        raise FixtureError(
            f"timed out after {LOCK_TIMEOUT_S:.0f} s waiting for another process to build the tiny model "
            f"{spec.name!r} in {root}",
            hint=f"check no build is stuck, then remove {root / ('.' + spec.name + '.lock')}",
        ) from None
    return final


def _clear_leftovers(root: Path, name: str) -> None:
    """Remove a half-built directory (no valid marker) and temp dirs of interrupted builds (lock held)."""
    final = root / name
    if final.is_dir() and not final.is_symlink():
        log.warning("tiny model %s in %s is incomplete (no valid %s): rebuilding it", name, root, MARKER)
        shutil.rmtree(final)
    elif final.exists() or final.is_symlink():
        final.unlink()
    for stale in root.glob(f".tmp-{name}-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _build_into(root: Path, spec: TinySpec) -> None:
    final = root / spec.name
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{spec.name}-", dir=root))
    try:
        os.chmod(tmp, 0o755)
        spec.build(tmp, spec.seed)
        _write_marker(tmp, spec)
        os.rename(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, EmollmError) or not isinstance(exc, Exception):
            raise
        raise FixtureError(
            f"could not build the tiny model {spec.name!r} in {root}: {type(exc).__name__}: {exc}"
        ) from exc
    _fsync_dir(root)
    log.debug("built tiny model %s in %s", spec.name, final)


def _write_marker(path: Path, spec: TinySpec) -> None:
    files = file_hashes(path)
    for rel in files:  # the data must be on disk before the marker that vouches for it
        with open(path / rel, "rb") as handle:
            os.fsync(handle.fileno())
    marker = {
        "fixture": "emollm.testing.tiny",
        "fixture_version": FIXTURE_VERSION,
        "name": spec.name,
        "kind": spec.kind,
        "seed": spec.seed,
        "versions": _library_versions(),
        "files": files,
    }
    tmp = path / (MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path / MARKER)
    _fsync_dir(path)


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "transformers", "tokenizers", "sentencepiece", "safetensors"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:  # pragma: no cover - all are dependencies
            out[package] = "missing"
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    from emollm.assets import sha256_file

    return sha256_file(path)


__all__ = [
    "ENCODER_NAMES",
    "FIXTURE_VERSION",
    "LLM_NAMES",
    "MARKER",
    "SPECS",
    "TINY_MODEL_NAMES",
    "TinyModels",
    "TinySpec",
    "build_tiny_models",
    "default_cache_dir",
    "file_hashes",
    "is_complete",
    "tiny_model_path",
]
