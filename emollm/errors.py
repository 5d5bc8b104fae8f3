"""Typed exceptions: the one place every emollm error type is declared.

Every error a user can cause (bad input, bad config, missing optional dependency) is an
:class:`EmollmError`. The CLI prints such an error as one line (plus its hint) instead of a
traceback; ``--debug`` shows the traceback. Anything that is *not* an EmollmError is a bug.
"""

from __future__ import annotations

from pathlib import Path


class EmollmError(Exception):
    """Base of all user-facing errors. ``hint`` says what to do about it."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class ConfigError(EmollmError):
    """A config file or override is invalid: unknown key, wrong type, failed check; or a command's
    arguments do not fit together. No default hint: a hint says what helps with *this* error (the
    config loader adds ``CONFIG_SHOW_HINT`` to a wrong value or type it finds in a file)."""

    hint = None


CONFIG_SHOW_HINT = "run `emollm config show --config FILE` to see the resolved config; `emollm config keys` lists the valid keys"


class MissingDependencyError(EmollmError):
    """An optional dependency (an extra) is needed for this feature and is not installed."""

    def __init__(self, package: str, extra: str, feature: str):
        super().__init__(
            f"{feature} needs the optional package '{package}', which is not installed",
            hint=f"pip install 'emollm[{extra}]'",
        )
        self.package = package
        self.extra = extra


class MediaError(EmollmError):
    """A clip could not be read. ``path`` names the file and ``cause`` the reason."""

    hint = "check the file plays in a media player; a builder run records it and goes on"

    def __init__(self, path: str | Path, cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


class MediaNotFoundError(MediaError):
    """The path does not exist, is a directory, or cannot be read (permissions)."""


class EmptyMediaError(MediaError):
    """The file is zero bytes long, or holds no decodable frame / sample."""


class CorruptMediaError(MediaError):
    """The container or stream data is invalid or truncated."""


class UnsupportedCodecError(MediaError):
    """The stream uses a codec this PyAV build cannot decode."""


class NoVideoStreamError(MediaError):
    """Frames were asked for, but the file has no video stream (and is not an image)."""


class NoAudioStreamError(MediaError):
    """Audio was asked for, but the file has no audio stream."""


class FrameSamplingError(MediaError, ValueError):
    """A frame-sampling request is invalid: indices out of range, or not exactly one of
    num_frames / fps / indices, or a non-positive count or rate."""

    hint = "frame indices are 0-based and below the clip's frame count (see emollm.media.probe)"


class MediaTokenMismatchError(EmollmError):
    """The media tokens in a row do not match what the model expects for that modality
    (a count other than 0 or the modality's tokens per clip, or tokens without features)."""

    hint = "build inputs with the processor saved with this model: it expands each placeholder to the right count"


class FixtureError(EmollmError):
    """An offline test fixture (tiny model, sample media) could not be built or fetched."""


class EvaluationInputError(EmollmError):
    """Predictions or references cannot be evaluated: unreadable file, missing or duplicate ids,
    reference labels outside the label set."""

    hint = "see docs/evaluate.md for the accepted prediction and reference formats"


class LLMError(EmollmError):
    """An LLM backend (``emollm.llm``: OpenAI-compatible endpoint or local HF model) cannot be set up:
    no API key in the named variable, a model path that does not exist."""


class JudgeError(LLMError):
    """The EMER judge cannot be set up or reached at all (no key, bad model path, bad prompt file)."""


class WriterError(LLMError):
    """A dataset-builder writer (reasoning LLM) or its prompt file cannot be set up."""


class CueError(EmollmError):
    """A builder cue source cannot be set up: a whisper model that is neither a known name in the
    local cache nor a file, an AU phrase table that is missing or malformed."""


class AUExtractionError(EmollmError):
    """Action units could not be obtained for a clip (missing or unreadable OpenFace output, the
    OpenFace binary failed). ``path`` names the file at fault and ``cause`` the reason."""

    hint = "a builder run records the clip in errors.jsonl and goes on; see docs/builder.md for the AU sources"

    def __init__(self, path: str | Path, cause: str, *, hint: str | None = None):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}", hint=hint)


class OpenFaceNotFoundError(EmollmError):
    """``build.au_source=openface_bin`` but the OpenFace ``FeatureExtraction`` binary is not found."""

    hint = (
        "install OpenFace 2.x and put FeatureExtraction on PATH (or set build.openface_bin), "
        "or use build.au_source=builtin (offline, no binary needed)"
    )


class RecordSchemaError(EmollmError):
    """A clip record (annotations.jsonl line) has an unknown schema version or misses required fields."""

    hint = "rebuild the dataset with this emollm (emollm build), or upgrade emollm to read it"


class FeatureCacheError(EmollmError):
    """The feature cache cannot serve what was asked: no cache for an encoder, an unreadable entry,
    or cached features whose shape does not match the model config."""

    hint = "run `emollm features --config FILE DATASET_DIR` with the same encoders as the training config"


class FeatureMissingError(FeatureCacheError):
    """A clip has no usable cache entry for a modality's current encoder (never extracted, the encoder
    changed, or ``reason``: the entry is stale, made from other inputs)."""

    def __init__(self, clip_id: str, modality: str, encoder: str, fingerprint: str | None, *, hint: str | None = None,
                 reason: str | None = None):
        self.clip_id = clip_id
        self.modality = modality
        self.encoder = encoder
        self.fingerprint = fingerprint
        self.reason = reason
        fp = f" (fingerprint {fingerprint[:16]})" if fingerprint else ""
        what = f"the cached '{modality}' features from encoder '{encoder}'{fp} are stale ({reason})" if reason \
            else f"no cached '{modality}' features from encoder '{encoder}'{fp}"
        super().__init__(
            f"clip '{clip_id}': {what}",
            hint=hint or "run `emollm features` on the dataset (it resumes), or set features.on_missing=skip",
        )


class FeatureEntryError(FeatureCacheError):
    """A cache entry cannot be trusted: its file is truncated or unreadable, holds another clip's or
    encoder's features, its bytes changed since written (checksum) or its values are NaN / inf. Never
    served; ``emollm features`` recomputes it. ``path`` names the file and ``cause`` what is wrong."""

    hint = "rerun `emollm features` on the dataset (it recomputes damaged entries), or set features.on_missing=skip"

    def __init__(self, path: str | Path, clip_id: str, modality: str, cause: str, *, hint: str | None = None):
        self.path, self.clip_id, self.modality, self.cause = str(path), clip_id, modality, cause
        super().__init__(f"{self.path}: clip '{clip_id}', modality '{modality}': {cause}", hint=hint)


class CheckpointFileError(EmollmError):
    """A checkpoint / run / export file cannot be used. ``path`` names the file and ``cause`` the reason."""

    def __init__(self, path: str | Path, cause: str, *, hint: str | None = None):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}", hint=hint)


class CorruptCheckpointError(CheckpointFileError):
    """A checkpoint file is truncated, zeroed or unparsable (a killed save, a full disk, a bad copy)."""

    hint = "resume from an earlier checkpoint-<step> (train.resume=latest skips corrupt ones), or retrain"


class UnsafeCheckpointError(CheckpointFileError):
    """A pickle file names a Python callable outside the allowlist of tensor / state types: loading it
    could run code, so it is refused before any library unpickles it (docs/security.md)."""

    hint = "only load checkpoints you made or trust; emollm never unpickles arbitrary objects (docs/security.md)"


class UnsafePathError(EmollmError):
    """An id or other outside text (a record's id, a CSV cell) would name a file outside the output
    folder it is written under (``..``, an absolute path, NUL, an empty name, a symlink leading out).
    ``name`` is the offending text, ``root`` the folder (emollm.paths)."""

    hint = "ids name files under the output folder only: no '..', no leading '/', no empty parts (docs/builder.md)"

    def __init__(self, name: str, root: str | Path, cause: str):
        self.name = name
        self.root = str(root)
        self.cause = cause
        super().__init__(f"id {name!r} cannot name a file under {self.root}: {cause}")
