"""QLoRA: the backbone loaded 4-bit (nf4 / fp4) or 8-bit by bitsandbytes (docs/training.md, "QLoRA").

One home for what a quantised run is. The settings are a plain dict stored in the model's config
(``EmoLLMConfig.quantization``), so a run dir says how its backbone was loaded and
``EmoLLMForConditionalGeneration.from_pretrained`` quantises the base model again the same way::

    {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    {"bits": 8}

Only the backbone's Linear layers are quantised (bitsandbytes ``Linear4bit`` / ``Linear8bitLt``);
embeddings, norms and the LM head stay in floating point, and the media modules (projectors, AU
encoder, fusion, prompt tokens) stay float32 and train fully. bitsandbytes >= 0.45 runs both kinds on
CPU as well as CUDA; :func:`backend_error` says when the installed one cannot.
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Any

import torch

from emollm.errors import EmollmError

KINDS = {"4bit": 4, "8bit": 8}
_DTYPES = ("float32", "bfloat16", "float16")


def settings_from_config(cfg: Any) -> dict[str, Any] | None:
    """The quantisation settings a training config asks for (``train.quantization`` & co), or None.

    ``train.bnb_4bit_compute_dtype: auto`` becomes a concrete dtype here (bf16 / fp16 when mixed
    precision is on, else the backbone's ``torch_dtype``, else float32), so the saved settings load
    the same model anywhere.
    """
    t = cfg.train
    if t.quantization == "none":
        return None
    if t.quantization == "8bit":
        return {"bits": 8}
    compute = t.bnb_4bit_compute_dtype
    if compute == "auto":
        backbone_dtype = cfg.model.backbone.torch_dtype
        compute = ("bfloat16" if t.bf16 else "float16" if t.fp16 else
                   backbone_dtype if backbone_dtype in _DTYPES else "float32")
    return {"bits": 4, "quant_type": t.bnb_4bit_quant_type, "double_quant": bool(t.bnb_4bit_use_double_quant),
            "compute_dtype": compute}


def describe(settings: dict[str, Any] | None) -> str:
    """``4-bit nf4 (double quant, compute bfloat16)`` / ``8-bit (LLM.int8)`` / ``none``."""
    if not settings:
        return "none"
    if settings["bits"] == 8:
        return "8-bit (LLM.int8)"
    double = ", double quant" if settings.get("double_quant") else ""
    return f"4-bit {settings.get('quant_type', 'nf4')} ({settings.get('compute_dtype', 'float32')} compute{double})"


def bnb_config(settings: dict[str, Any]):
    """The ``transformers.BitsAndBytesConfig`` of ``settings``."""
    from transformers import BitsAndBytesConfig

    bits = settings.get("bits")
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=settings.get("quant_type", "nf4"),
            bnb_4bit_use_double_quant=bool(settings.get("double_quant", False)),
            bnb_4bit_compute_dtype=getattr(torch, settings.get("compute_dtype", "float32")),
        )
    raise EmollmError(f"unknown quantisation settings {settings!r}: 'bits' must be 4 or 8")


def default_device_map() -> dict[str, Any]:
    """Where a quantised backbone is loaded: this process's GPU, else the CPU.

    bitsandbytes quantises while loading, on that device; accelerate refuses to train a quantised
    model on another device, so each DDP rank loads onto its own GPU.
    """
    if torch.cuda.is_available():
        return {"": torch.cuda.current_device()}
    return {"": "cpu"}


@functools.cache
def backend_error(device: str = "cpu") -> str | None:
    """Why bitsandbytes cannot run 4-bit and 8-bit layers on ``device`` here (None: it can).

    Checked by running one tiny quantised matmul of each kind, so an old bitsandbytes without a CPU
    backend (< 0.45) is found before any model is loaded.
    """
    try:
        import bitsandbytes as bnb
    except ImportError as exc:  # pragma: no cover - a dependency of emollm
        return f"bitsandbytes is not installed ({exc})"
    version = getattr(bnb, "__version__", "?")
    try:
        # fork_rng: the probe's random weights must not shift the run's seeded draws (LoRA init, dropout)
        gpus = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
        with warnings.catch_warnings(), torch.random.fork_rng(devices=gpus):
            warnings.simplefilter("ignore")
            x = torch.randn(2, 64, device=device)
            four = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4").to(device)
            eight = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False).to(device)
            for layer in (four, eight):
                if not torch.isfinite(layer(x)).all():
                    return f"bitsandbytes {version} gives non-finite outputs on {device}"
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable here"; the reason is reported
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"bitsandbytes {version} cannot run quantised layers on {device}: {first}"
    return None


def check_backend(key: str = "train.quantization", value: str | None = None) -> None:
    """Raise an error naming ``key`` when this machine cannot run bitsandbytes layers."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    reason = backend_error(device)
    if reason:
        raise EmollmError(f"{key}={value or 'on'}: {reason}",
                          hint="pip install -U 'bitsandbytes>=0.45' (CPU and CUDA backends), or set train.quantization=none")


class _Once(logging.Filter):
    """Lets a record whose message starts with ``prefix`` through once per process."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix, self.seen = prefix, False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        seen, self.seen = self.seen, True
        return not seen


def quiet_int8_cast_warning() -> None:
    """bitsandbytes' 8-bit matmul logs on every call with float32 inputs that it casts them to float16
    (LLM.int8 does so by design): said once per process, not once per layer and step."""
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _Once) for f in logger.filters):
        logger.addFilter(_Once("MatMul8bitLt: inputs will be cast"))


def is_quantized(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds bitsandbytes 4-bit or 8-bit layers."""
    try:
        import bitsandbytes as bnb
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in module.modules())


def keep_cpu_path_where_unpackable(model: torch.nn.Module) -> int:
    """bitsandbytes (0.50) on a CPU with AVX512-BF16 repacks a ``Linear4bit``'s weight for its CPU kernel
    at the first no-grad forward in eval mode (``functional._convert_weight_packed_for_cpu``), which
    needs ``out_features`` a multiple of 32 and ``in_features`` a multiple of the quantisation block
    (64), else it fails ("N must be divisible by block_n", a reshape error). Layers of other widths
    (tiny test models; real LLMs' widths are multiples of 64) keep bnb's generic 4-bit path instead.
    Returns how many layers were switched."""
    try:
        import bitsandbytes as bnb
    except ImportError:  # pragma: no cover
        return 0
    switched = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit) or not getattr(module, "support_avx512bf16_for_cpu", False):
            continue
        block = getattr(getattr(module.weight, "quant_state", None), "blocksize", None) or 64
        if module.out_features % 32 or module.in_features % block:
            module.support_avx512bf16_for_cpu = False
            switched += 1
    return switched


def validate_settings(settings: dict[str, Any]) -> None:
    """Reject a hand-edited ``quantization`` entry of a run's config.json with a clear message."""
    bits = settings.get("bits")
    if bits not in (4, 8):
        raise EmollmError(f"config.json: quantization.bits must be 4 or 8, got {bits!r}")
    if bits == 4:
        if settings.get("quant_type", "nf4") not in ("nf4", "fp4"):
            raise EmollmError(f"config.json: quantization.quant_type must be nf4 or fp4, got {settings.get('quant_type')!r}")
        if settings.get("compute_dtype", "float32") not in _DTYPES:
            raise EmollmError(f"config.json: quantization.compute_dtype must be one of {_DTYPES}, "
                              f"got {settings.get('compute_dtype')!r}")


__all__ = ["KINDS", "backend_error", "bnb_config", "check_backend", "default_device_map", "describe", "is_quantized",
           "keep_cpu_path_where_unpackable", "quiet_int8_cast_warning", "settings_from_config", "validate_settings"]
