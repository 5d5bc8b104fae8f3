"""Vet files a user did not make before anything loads them (docs/security.md).

A checkpoint folder, run dir or export can come from anyone. Libraries that read it unpickle some of
its files themselves: accelerate's ``load_state`` (``custom_checkpoint_*.pkl`` with
``weights_only=False``), DeepSpeed's engine (``*_model_states.pt`` / ``*_optim_states.pt`` with
``weights_only=False``). An unpickled file can run any code (``__reduce__``), so :func:`vet` reads
every pickle *statically* first (``pickletools`` opcodes, nothing is executed) and refuses one that
names a callable outside :data:`ALLOWED_GLOBALS` (tensor / storage rebuilding, ``OrderedDict``, numpy
arrays and the few DeepSpeed state classes its checkpoints hold). It also checks that every file is
whole: safetensors headers and sizes, JSON parses, zip archives have their directory, and (for
checkpoints) the sizes recorded at save time. One function, used by every loader of such folders:

>>> vet("out/checkpoint-40")            # raises UnsafeCheckpointError / CorruptCheckpointError
>>> vet("run_dir", sizes=None)          # a file works too
"""

from __future__ import annotations

import _compat_pickle
import fnmatch
import io
import json
import os
import pickletools
import struct
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from emollm.errors import CorruptCheckpointError, UnsafeCheckpointError

PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# (module, name) pairs a legitimate checkpoint pickle may name. Each either rebuilds a tensor from
# raw storage, or builds a plain container / number; none imports or calls anything else.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    *(("torch._utils", n) for n in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
                                    "_rebuild_parameter", "_rebuild_parameter_with_state",
                                    "_rebuild_device_tensor_from_numpy", "_rebuild_meta_tensor_no_storage",
                                    "_rebuild_qtensor", "_rebuild_sparse_tensor")),
    # a tensor with Python attributes (ZeRO-3 optimizer states): its rebuild function and type are named
    # (and checked) separately
    ("torch._tensor", "_rebuild_from_type_v2"), ("torch", "Tensor"), ("torch.nn.parameter", "Parameter"),
    ("torch", "Size"), ("torch", "device"), ("torch", "contiguous_format"), ("torch", "channels_last"),
    ("torch", "preserve_format"), ("torch", "per_tensor_affine"),
    ("torch.storage", "UntypedStorage"), ("torch.storage", "TypedStorage"),
    ("collections", "OrderedDict"), ("collections", "defaultdict"),
    *(("builtins", n) for n in ("set", "frozenset", "dict", "list", "tuple", "complex", "slice", "range",
                                "bytearray", "int", "float", "bool", "str", "bytes")),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles (numpy RNG state)
    *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")),
    *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")),  # protocol-5 arrays
    ("numpy", "ndarray"), ("numpy", "dtype"),
    # DeepSpeed's own checkpoint files (*_model_states.pt, *_optim_states.pt): enums / plain state holders
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaleProfile"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
})


def _allowed(module: str, name: str) -> bool:
    if (module, name) in ALLOWED_GLOBALS:
        return True
    if module == "torch" and name.endswith("Storage") and name.isidentifier():
        return True  # torch.FloatStorage, torch.BFloat16Storage ... (typed storage classes)
    if module == "torch":  # dtypes: torch.float32 ... (looked up, never imported by name)
        import torch

        return isinstance(getattr(torch, name, None), torch.dtype)
    return module == "numpy.dtypes" and name.endswith("DType") and name.isidentifier()


_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
               "BINUNICODE8"}
_MARK = object()
_OTHER = object()


def _scan_pickle(stream: io.BufferedIOBase, where: str) -> tuple[Any, int]:
    """Walk one pickle's opcodes (executing nothing), refusing any global not allowed.
    Returns (the last value pushed when it is a constant, else None; the end offset)."""
    stack: list[Any] = []
    memo: dict[Any, Any] = {}
    try:
        for opcode, arg, _pos in pickletools.genops(stream):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                _check_global(module, attr, where)
            elif name == "STACK_GLOBAL":
                attr = stack.pop() if stack else _OTHER
                module = stack.pop() if stack else _OTHER
                if not (isinstance(module, str) and isinstance(attr, str)):
                    raise UnsafeCheckpointError(where, "a pickle global whose name is computed (STACK_GLOBAL on "
                                                       "non-constant strings): refused")
                _check_global(module, attr, where)
                stack.append(_OTHER)
                continue
            elif name in ("EXT1", "EXT2", "EXT4"):
                raise UnsafeCheckpointError(where, f"a pickle extension-registry global ({name}): refused")
            if name == "STOP":
                last = stack[-1] if stack else None
                return (last if last is not _OTHER else None), stream.tell()
            # Abstract stack effect, as pickletools.dis computes it; constants are tracked for STACK_GLOBAL.
            before, after = opcode.stack_before, opcode.stack_after
            npop = len(before)
            if pickletools.markobject in before or (name == "POP" and stack and stack[-1] is _MARK):
                while stack and stack[-1] is not _MARK:
                    stack.pop()
                if stack:
                    stack.pop()
                npop = before.index(pickletools.markobject) if pickletools.markobject in before else 0
            if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1] if stack else _OTHER
            elif name == "MEMOIZE":  # stores the top, leaves it in place
                memo[len(memo)] = stack[-1] if stack else _OTHER
                continue
            for _ in range(min(npop, len(stack))):
                stack.pop()
            if name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg, _OTHER))
            elif name in _STRING_OPS:
                stack.append(arg if isinstance(arg, str) else _OTHER)
            elif name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"):
                stack.append(arg)
            elif pickletools.markobject in after:
                stack.append(_MARK)
            else:
                stack.extend(_OTHER for _ in after)
    except (ValueError, EOFError, struct.error, KeyError, IndexError) as exc:
        raise CorruptCheckpointError(where, f"not a complete pickle ({exc})") from None
    raise CorruptCheckpointError(where, "not a complete pickle (no STOP opcode: truncated)")


def _check_global(module: str, name: str, where: str) -> None:
    # Python 2 names (protocol <= 2 pickles, torch's default) resolve to Python 3 ones, as pickle does
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    if not _allowed(module, name):
        raise UnsafeCheckpointError(where, f"refused pickle global '{module}.{name}': loading this file would execute "
                                           "code it names (emollm loads only tensors and plain state)")


def check_pickle(path: str | os.PathLike) -> None:
    """A torch-saved file (zip archive or legacy) or a plain pickle: every pickle in it is scanned."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    # Decided as torch.load decides (the local-header magic at byte 0, not zipfile's search from the end),
    # so a pickle/zip polyglot is scanned as what torch will unpickle.
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                if any(n.rsplit("/", 1)[-1] == "constants.pkl" or "/code/" in n for n in names):
                    raise UnsafeCheckpointError(path, "a TorchScript archive (holds code): refused")
                pickles = [n for n in names if n.endswith(".pkl")]
                if not pickles:
                    raise CorruptCheckpointError(path, "a zip archive without a pickle: not a torch file")
                for entry in pickles:
                    data = zf.read(entry)  # checks the entry's CRC
                    _scan_pickle(io.BytesIO(data), f"{path} ({entry})")
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:  # truncated / damaged archive
            raise CorruptCheckpointError(path, f"damaged zip archive ({exc})") from None
        return
    if _is_tar_with_members(path):  # torch's legacy tar format: unpickles members this scan would not see
        raise UnsafeCheckpointError(path, "a legacy torch tar archive: refused (re-save it with torch >= 1.6)")
    data = path.read_bytes()
    if not data or chr(data[0]) not in pickletools.code2op:  # zeroed: 0x00 is no pickle opcode
        raise CorruptCheckpointError(path, "neither a torch archive nor a pickle (zeroed or truncated?)")
    stream = io.BytesIO(data)
    first, end = _scan_pickle(stream, str(path))
    if first == _TORCH_LEGACY_MAGIC:  # legacy torch.save: protocol, sys info, object, storage keys, raw data
        for _ in range(4):
            _scan_pickle(stream, str(path))
    elif end != len(data):
        raise CorruptCheckpointError(path, f"{len(data) - end} bytes after the pickle's end")


def _is_tar_with_members(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:") as tar:
            return tar.next() is not None  # a zeroed file opens as an empty archive: that is damage, not a tar
    except (tarfile.TarError, OSError, ValueError):
        return False


def check_safetensors(path: str | os.PathLike) -> None:
    """Header parses and every tensor's bytes lie inside the file (truncation, zeroing)."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n == 0 or 8 + n > size:
                raise ValueError(f"header length {n} does not fit the file's {size} bytes")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            raise ValueError(f"tensor data ends at byte {8 + n + end}, the file has {size} (truncated)")
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(path, f"not a complete safetensors file ({exc})") from None


def check_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(path, f"not valid JSON ({exc})") from None


def file_sizes(folder: str | os.PathLike) -> dict[str, int]:
    """``{relative path: bytes}`` of every file under ``folder`` (recorded when a checkpoint is saved)."""
    root = Path(folder)
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def vet(path: str | os.PathLike, *, sizes: dict[str, int] | None = None, skip: tuple[str, ...] = ()) -> None:
    """Check a file, or every file under a folder, before a library loads it.

    Pickles (``.pkl .bin .pt .pth .ckpt .pickle``) are scanned for refused globals
    (:class:`UnsafeCheckpointError`), safetensors / JSON for completeness, and with ``sizes`` (as
    :func:`file_sizes` recorded them) every listed file must exist with that size
    (:class:`CorruptCheckpointError`). ``skip``: glob patterns of top-level entries not vetted (what
    the caller does not load, e.g. a run dir's ``checkpoint-*``). Nothing in the files is executed or imported.
    """
    root = Path(path)
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*")
        if p.is_file() and not any(fnmatch.fnmatch(p.relative_to(root).parts[0], pat) for pat in skip))
    for f in files:  # contents first: a planted pickle is reported as refused, whatever its size
        suffix = f.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            check_pickle(f)
        elif suffix == ".safetensors":
            check_safetensors(f)
        elif suffix == ".json":
            check_json(f)
    for rel, size in (sizes or {}).items():
        f = root / rel
        if not f.is_file():
            raise CorruptCheckpointError(f, "missing (listed in the checkpoint when it was saved)")
        if f.stat().st_size != size:
            raise CorruptCheckpointError(f, f"{f.stat().st_size} bytes, {size} when it was saved (truncated or replaced)")


__all__ = ["ALLOWED_GLOBALS", "check_json", "check_pickle", "check_safetensors", "file_sizes", "vet"]


def load_torch_file(path: str | os.PathLike) -> Any:
    """A ``torch.save`` file someone else made (a released checkpoint), loaded with nothing executed:
    :func:`check_pickle` refuses a pickle naming code before anything unpickles it, then ``torch.load``
    runs with ``weights_only=True`` (tensors and plain containers only) on the CPU. A ``.safetensors``
    file is read as a flat ``{name: tensor}``. Never falls back to a full unpickle."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CorruptCheckpointError(path, "no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        check_safetensors(path)
        return load_file(str(path))
    check_pickle(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's own weights-only refusal, or damage the static scan could not see
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnsafeCheckpointError(path, f"not loaded: torch.load(weights_only=True) refused it, as loading it "
                                          f"would execute code ({first[:300]})") from None
