"""Tiny audio / image / face / video / text encoders with their processors, saved like the hub checkpoints.

Each builder writes ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` (the text
encoder: ``tokenizer.json`` + ``tokenizer_config.json``) into an empty directory; ``AutoModel`` and
``AutoFeatureExtractor`` / ``AutoImageProcessor`` / ``AutoTokenizer`` load them by path.
The hidden sizes differ from one encoder to the next (and from the LLMs' 64) so a projector wired to
the wrong encoder fails on shape instead of passing silently. Processor settings (mean/std, sampling
rate, mel bins) are those of the checkpoint each one stands in for; only the sizes are scaled down.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from emollm.testing.tiny._common import seeded_init

# The normalisation constants of the real checkpoints.
_IMAGENET_MEAN, _IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
_HALF = [0.5, 0.5, 0.5]
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class EncoderShape:
    """What a test needs to know to feed an encoder and check its output."""

    hidden_size: int
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    image_size: int | None = None  # vision encoders: the processor's output size (square)
    patch_size: int | None = None
    num_frames: int | None = None  # video
    sampling_rate: int | None = None  # audio


HUBERT = EncoderShape(hidden_size=32, sampling_rate=16000)
WAV2VEC2 = EncoderShape(hidden_size=48, sampling_rate=16000)
WHISPER_ENCODER = EncoderShape(hidden_size=40, sampling_rate=16000)
CLIP_VISION = EncoderShape(hidden_size=56, image_size=32, patch_size=8)
VIT = EncoderShape(hidden_size=36, image_size=48, patch_size=16)
VIT_MAE = EncoderShape(hidden_size=52, image_size=32, patch_size=8)
VIDEOMAE = EncoderShape(hidden_size=44, image_size=32, patch_size=16, num_frames=16)
BERT = EncoderShape(hidden_size=24)  # the text encoder (subtitles): RoBERTa / BERT in TelME and HLM12ERC
BERT_VOCAB_SIZE = 600
BERT_MAX_POSITIONS = 128

# The convolutional front end of HuBERT / wav2vec2 keeps its real strides (320x: 16 kHz -> 50 Hz) but
# not its 512 channels.
_CONV_DIM = (32,) * 7


def _save(out: Path, model, processor) -> None:
    model.save_pretrained(out)
    processor.save_pretrained(out)


def _build_wav2vec2_family(out: Path, seed: int, shape: EncoderShape, config_cls: str, model_cls: str) -> None:
    """HuBERT and wav2vec2 share the conv feature encoder, the config fields and the feature extractor."""
    import transformers
    from transformers import Wav2Vec2FeatureExtractor

    config = getattr(transformers, config_cls)(
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        intermediate_size=2 * shape.hidden_size,
        conv_dim=_CONV_DIM,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=16,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
    )
    processor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    )
    _save(out, seeded_init(getattr(transformers, model_cls), config, seed), processor)


def build_hubert(out: Path, seed: int) -> None:
    """facebook/hubert-base-ls960-shaped."""
    _build_wav2vec2_family(out, seed, HUBERT, "HubertConfig", "HubertModel")


def build_wav2vec2(out: Path, seed: int) -> None:
    """facebook/wav2vec2-base-shaped."""
    _build_wav2vec2_family(out, seed, WAV2VEC2, "Wav2Vec2Config", "Wav2Vec2Model")


def build_whisper_encoder(out: Path, seed: int) -> None:
    """openai/whisper-tiny-shaped ``WhisperModel`` (use ``model.get_encoder()``): 80 mel bins, 30 s windows."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    s = WHISPER_ENCODER
    config = WhisperConfig(
        d_model=s.hidden_size,
        encoder_layers=s.num_hidden_layers,
        encoder_attention_heads=s.num_attention_heads,
        encoder_ffn_dim=2 * s.hidden_size,
        decoder_layers=1,
        decoder_attention_heads=s.num_attention_heads,
        decoder_ffn_dim=2 * s.hidden_size,
        num_mel_bins=80,
        max_source_positions=1500,
        max_target_positions=448,
    )
    processor = WhisperFeatureExtractor(
        feature_size=80, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400, padding_value=0.0
    )
    _save(out, seeded_init(WhisperModel, config, seed), processor)


def build_clip_vision(out: Path, seed: int) -> None:
    """openai/clip-vit-*-shaped vision tower (``CLIPVisionModel``) with the CLIP image processor."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    s = CLIP_VISION
    config = CLIPVisionConfig(
        hidden_size=s.hidden_size,
        intermediate_size=2 * s.hidden_size,
        num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads,
        image_size=s.image_size,
        patch_size=s.patch_size,
        projection_dim=32,
        hidden_act="quick_gelu",
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": s.image_size},
        crop_size={"height": s.image_size, "width": s.image_size},
        do_center_crop=True,
        image_mean=_CLIP_MEAN,
        image_std=_CLIP_STD,
        resample=3,
    )
    _save(out, seeded_init(CLIPVisionModel, config, seed), processor)


def build_vit(out: Path, seed: int) -> None:
    """google/vit-base-patch16-224-in21k-shaped."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    s = VIT
    config = ViTConfig(
        hidden_size=s.hidden_size,
        num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads,
        intermediate_size=2 * s.hidden_size,
        image_size=s.image_size,
        patch_size=s.patch_size,
    )
    processor = ViTImageProcessor(
        size={"height": s.image_size, "width": s.image_size}, image_mean=_HALF, image_std=_HALF, resample=2
    )
    _save(out, seeded_init(ViTModel, config, seed), processor)


def build_vit_mae(out: Path, seed: int) -> None:
    """facebook/vit-mae-base-shaped (keeps ``mask_ratio=0.75``: pass ``mask_ratio=0.0`` to get all patches)."""
    from transformers import ViTImageProcessor, ViTMAEConfig, ViTMAEModel

    s = VIT_MAE
    config = ViTMAEConfig(
        hidden_size=s.hidden_size,
        num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads,
        intermediate_size=2 * s.hidden_size,
        image_size=s.image_size,
        patch_size=s.patch_size,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=64,
        mask_ratio=0.75,
    )
    processor = ViTImageProcessor(
        size={"height": s.image_size, "width": s.image_size},
        image_mean=_IMAGENET_MEAN,
        image_std=_IMAGENET_STD,
        resample=3,
    )
    _save(out, seeded_init(ViTMAEModel, config, seed), processor)


def build_videomae(out: Path, seed: int) -> None:
    """MCG-NJU/videomae-base-shaped: 16 frames, tubelet 2."""
    from transformers import VideoMAEConfig, VideoMAEImageProcessor, VideoMAEModel

    s = VIDEOMAE
    config = VideoMAEConfig(
        hidden_size=s.hidden_size,
        num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads,
        intermediate_size=2 * s.hidden_size,
        image_size=s.image_size,
        patch_size=s.patch_size,
        num_frames=s.num_frames,
        tubelet_size=2,
        use_mean_pooling=False,
    )
    processor = VideoMAEImageProcessor(
        size={"shortest_edge": s.image_size},
        crop_size={"height": s.image_size, "width": s.image_size},
        image_mean=_IMAGENET_MEAN,
        image_std=_IMAGENET_STD,
        resample=2,
    )
    _save(out, seeded_init(VideoMAEModel, config, seed), processor)


def train_wordpiece_vocab(vocab_size: int) -> dict[str, int]:
    """A lower-cased BERT WordPiece vocabulary learned from the tiny corpus: ``[PAD]`` 0, ``[UNK]`` 1,
    ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4, every character alone and as a ``##`` continuation (so any
    word of the corpus alphabet tokenizes), then the most frequent whole words.

    The text is normalised and split by the ``tokenizers`` library's BERT normaliser and pre-tokenizer;
    the counting is done here, in a fixed order, because ``tokenizers``' WordPiece trainer breaks
    frequency ties differently from one process to the next (the files would not be byte-identical)."""
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers

    from emollm.testing.tiny.corpus import corpus

    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for line in corpus():
        counts.update(word for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(line)))
    chars = sorted({ch for word in counts for ch in word})
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{ch}" for ch in chars)]
    taken = set(pieces)
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if w not in taken]
    vocab = pieces + words[: vocab_size - len(pieces)]
    if len(vocab) != vocab_size:  # the corpus is too small for the requested vocabulary
        raise RuntimeError(f"the WordPiece vocabulary reached {len(vocab)} tokens, not {vocab_size}")
    return {token: index for index, token in enumerate(vocab)}


def build_bert(out: Path, seed: int) -> None:
    """bert-base-uncased-shaped text encoder (``BertModel`` + ``BertTokenizer``) for subtitles."""
    from transformers import BertConfig, BertModel, BertTokenizer

    s = BERT
    tokenizer = BertTokenizer(vocab=train_wordpiece_vocab(BERT_VOCAB_SIZE), do_lower_case=True,
                              model_max_length=BERT_MAX_POSITIONS)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.hidden_size,
        num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads,
        intermediate_size=2 * s.hidden_size,
        max_position_embeddings=BERT_MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
    )
    _save(out, seeded_init(BertModel, config, seed), tokenizer)


# A tiny ViT under the original EVA-CLIP keys of LAVIS's ``eva_vit_g.pth`` (BLIP-2 / MiniGPT-v2's global
# encoder): width 32, 2 blocks, 2 heads, patch 14, mlp 48, a 2x2 position grid (28 px). Convert it with
# ``emollm import eva-vit`` / :func:`emollm.modeling.eva_vit.convert_eva_vit` (``num_heads=2``).
EVA_TINY = {"hidden": 32, "depth": 2, "heads": 2, "patch": 14, "mlp": 48, "grid": 2}


def eva_vit_state_dict(seed: int = 0) -> dict:
    """Random weights under the original ``eva_vit_g.pth`` keys (non-trivial norms and biases)."""
    import torch

    d, mlp = EVA_TINY["hidden"], EVA_TINY["mlp"]
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.1):
        return torch.randn(*shape, generator=g) * scale

    block = {"norm1.weight": (d,), "norm1.bias": (d,), "attn.q_bias": (d,), "attn.v_bias": (d,),
             "attn.qkv.weight": (3 * d, d), "attn.proj.weight": (d, d), "attn.proj.bias": (d,), "norm2.weight": (d,),
             "norm2.bias": (d,), "mlp.fc1.weight": (mlp, d), "mlp.fc1.bias": (mlp,), "mlp.fc2.weight": (d, mlp),
             "mlp.fc2.bias": (d,)}  # fmt: skip
    sd = {"cls_token": rand(1, 1, d, scale=0.5), "pos_embed": rand(1, 1 + EVA_TINY["grid"] ** 2, d, scale=0.5),
          "patch_embed.proj.weight": rand(d, 3, EVA_TINY["patch"], EVA_TINY["patch"], scale=0.05),
          "patch_embed.proj.bias": rand(d)}  # fmt: skip
    for i in range(EVA_TINY["depth"]):
        for key, shape in block.items():
            sd[f"blocks.{i}.{key}"] = 1 + rand(*shape) if key in ("norm1.weight", "norm2.weight") else rand(*shape)
    return sd
