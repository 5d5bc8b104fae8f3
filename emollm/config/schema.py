"""The emollm config family: one tree of dataclasses for build, features, train, predict, evaluate.

Every command reads the same file shape; each uses the sections it needs. A section's
``validate()`` holds its own checks, :meth:`EmollmConfig.validate` the checks across sections.
Keys, defaults and meanings are listed by ``emollm config keys``; docs/config.md explains the
file format (``extends:``, ``${ENV}``, dotted overrides).
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from emollm.config.loader import ConfigCheck

SCHEMA_VERSION = 1

LabelSetName = str  # a shipped label set (merr, dfew, mer2023, meld, iemocap4, iemocap6, mafw, caer) or a YAML path
Modality = Literal["audio", "visual", "face", "video", "text", "au", "precomputed"]
#: Encoder kinds whose features are imported files (``emollm import ...-features``): no checkpoint, never computed.
IMPORTED_KINDS = ("precomputed",)
TorchDtype = Literal["auto", "float32", "float16", "bfloat16"]


def _check_label_set(section: object, key: str) -> None:
    """A shipped label set's name or a readable label-set YAML (emollm/dataset/label_sets.py); a file path is made
    absolute, so the resolved config saved beside a run reads the same file from anywhere."""
    from emollm.dataset.label_sets import load_label_set, resolve
    from emollm.errors import ConfigError

    value = getattr(section, key)
    if value is None:
        return
    try:
        load_label_set(value)
    except ConfigError as err:
        raise ConfigCheck(key, err.message, hint=err.hint) from None
    setattr(section, key, resolve(value))


def _positive(section: object, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        if value is not None and value <= 0:
            raise ConfigCheck(name, f"must be > 0, got {value}")


@dataclass
class RunConfig:
    """Where a command writes and how it behaves."""

    name: str = "emollm"
    output_dir: str = "runs/emollm"  # the resolved config is saved here next to the outputs
    seed: int = 42


@dataclass
class DataConfig:
    """Inputs: raw clips for `build`, a built dataset for `features` / `train` / `predict` / `evaluate`."""

    clips_dir: str | None = None
    dataset_dir: str | None = None
    labels_csv: str | None = None  # ground-truth labels by clip id
    subtitles_csv: str | None = None  # subtitles by clip id
    label_set: LabelSetName = "merr"  # a shipped set's name or a label-set YAML path (docs/evaluate.md)
    train_split: str = "train"
    eval_split: str = "test"

    def validate(self) -> None:
        _check_label_set(self, "label_set")
        if self.train_split == self.eval_split:
            raise ConfigCheck("eval_split", f"must differ from train_split ('{self.train_split}')")


@dataclass
class FaceConfig:
    """Face detection, tracking and alignment (a registered detector + dlib's 68 landmarks); docs/media.md."""

    detector: str = "mtcnn"  # a registered face detector: mtcnn | dlib_hog | dlib_cnn (emollm.media.detectors)
    detect_max_side: int = 640  # frames are downscaled to this for detection only
    upsample: int = 0  # doublings of the detection resolution: each finds faces half as small, ~4x the time
    iou_threshold: float = 0.3  # detections further apart than this start a new track
    max_gap: int = 5  # a track survives this many sampled frames without its face
    bridge: bool = True  # re-detect (else interpolate) the main face in frames its track missed
    keyframe_every: int = 5  # videos: full-frame detection every N frames, the main face tracked around its box between
    crop_size: int = 224  # aligned face crops are crop_size x crop_size

    def validate(self) -> None:
        # The registry is the one list of detector names (a user may register more).
        from emollm.media.detectors import detector_names, unknown_detector_message

        if self.detector not in detector_names():
            message, hint = unknown_detector_message(self.detector)
            raise ConfigCheck("detector", message, hint=hint)
        _positive(self, "detect_max_side", "crop_size")
        if self.upsample < 0:
            raise ConfigCheck("upsample", f"must be >= 0, got {self.upsample}")
        if self.max_gap < 0:
            raise ConfigCheck("max_gap", f"must be >= 0, got {self.max_gap}")
        if self.keyframe_every < 1:
            raise ConfigCheck("keyframe_every", f"must be >= 1 (1: detect on every frame), got {self.keyframe_every}")
        if not 0.0 < self.iou_threshold < 1.0:
            raise ConfigCheck("iou_threshold", f"must be between 0 and 1, got {self.iou_threshold}")


@dataclass
class MediaConfig:
    """How clips are decoded: frame sampling (num_frames XOR fps) and audio resampling."""

    num_frames: int | None = 16  # uniform sampling over the clip
    fps: float | None = None  # or: sample at this rate
    max_side: int | None = None  # downscale decoded frames so the longer side is at most this
    sample_rate: int = 16000
    face: FaceConfig = field(default_factory=FaceConfig)

    def validate(self) -> None:
        if (self.num_frames is None) == (self.fps is None):
            raise ConfigCheck(
                "num_frames",
                "set exactly one of media.num_frames and media.fps",
                hint="for example media.num_frames=16 media.fps=null",
            )
        _positive(self, "num_frames", "fps", "max_side", "sample_rate")


@dataclass
class WriterConfig:
    """The builder's reasoning writer (MERR fine descriptions); docs/builder.md "Writers"."""

    backend: Literal["none", "template", "openai", "hf"] = "template"  # template: deterministic, offline
    prompt: str = "merr_reason"  # prompts/writers/<name>.yaml (system + user), or a YAML path
    base_url: str = "http://127.0.0.1:8000/v1"  # openai: any OpenAI-compatible endpoint
    model: str = ""  # openai: the served model name; hf: a local causal LM path
    api_key_env: str | None = "OPENAI_API_KEY"  # the env var holding the key (null: no key sent)
    concurrency: int = 4  # writer calls in flight at once
    max_retries: int = 2  # extra attempts after a timeout, an HTTP error or an unusable reply
    backoff_s: float = 1.0  # wait before retry n: backoff_s * 2**(n-1)
    timeout_s: float = 60.0  # per HTTP request
    max_new_tokens: int = 400
    cache_dir: str | None = None  # None: <out>/writer_cache; replies keyed by sha256(backend, model, prompt)
    retry_invalid: bool = False  # re-ask prompts whose cached reply was unusable

    def validate(self) -> None:
        _positive(self, "concurrency", "timeout_s", "max_new_tokens")
        if self.max_retries < 0 or self.backoff_s < 0:
            raise ConfigCheck("max_retries", "max_retries and backoff_s must be >= 0")
        if self.backend in ("openai", "hf") and not self.model:
            raise ConfigCheck("model", f"writer backend '{self.backend}' needs build.writer.model")


@dataclass
class DescriberConfig:
    """The builder's visual objective describer (peak frame -> text); docs/builder.md "Visual description"."""

    backend: Literal["none", "openai", "hf"] = "none"  # none: no visual description (never invented)
    prompt: str = "visual_description"  # prompts/writers/<name>.yaml (system + user), or a YAML path
    base_url: str = "http://127.0.0.1:8000/v1"  # openai: any OpenAI-compatible vision endpoint
    model: str = ""  # openai: the served model name; hf: a local image-text-to-text model path
    api_key_env: str | None = "OPENAI_API_KEY"  # the env var holding the key (null: no key sent)
    trust_remote_code: bool = False  # hf only
    concurrency: int = 4  # describer calls in flight at once
    max_retries: int = 2  # extra attempts after a timeout, an HTTP error or an unusable reply
    backoff_s: float = 1.0  # wait before retry n: backoff_s * 2**(n-1)
    timeout_s: float = 60.0  # per HTTP request
    max_new_tokens: int = 120
    image_max_side: int = 512  # the peak frame is downscaled to at most this many pixels before sending
    cache_dir: str | None = None  # None: <out>/describer_cache; replies keyed by sha256(backend, model, prompt+image)
    retry_invalid: bool = False  # re-ask frames whose cached reply was unusable

    def validate(self) -> None:
        _positive(self, "concurrency", "timeout_s", "max_new_tokens", "image_max_side")
        if self.max_retries < 0 or self.backoff_s < 0:
            raise ConfigCheck("max_retries", "max_retries and backoff_s must be >= 0")
        if self.backend in ("openai", "hf") and not self.model:
            raise ConfigCheck("model", f"describer backend '{self.backend}' needs build.describer.model")


@dataclass
class BuildConfig:
    """The MERR-style dataset builder (`emollm build`); see docs/builder.md."""

    au_source: Literal["builtin", "openface_csv", "openface_bin"] = "builtin"
    openface_dir: str | None = None  # folder of OpenFace CSVs named by clip id (<clip_id>.csv)
    openface_bin: str | None = None  # path of OpenFace's FeatureExtraction; None: looked up on PATH
    min_confidence: float = 0.8  # OpenFace frames with success=0 or confidence below this are dropped
    au_fps: float = 5.0  # built-in extractor: frames per second sampled for AUs (never more than the clip has)
    frame_max_side: int | None = 640  # built-in extractor: decoded frames downscaled to this longer side
    detect_max_side: int = 320  # built-in extractor, videos: face detection size (stills use media.face's)
    max_duration_s: float = 600.0  # longer clips are analysed over their first max_duration_s only (flagged)
    baseline: Literal["clip", "reference"] = "clip"  # neutral baseline of the built-in extractor (stills: reference)
    baseline_percentile: float = 10.0  # clip baseline: this percentile of each geometric feature over the clip
    presence_threshold: float = 1.0  # an AU is present when its intensity (0-5) is at least this
    peak_frame: Literal["frequent_aus", "intensity_sum"] = "frequent_aus"
    peak_top_aus: int = 3  # frequent_aus: how many of the clip's most frequent AUs define the peak
    peak_ignore_aus: list[str] = field(default_factory=lambda: ["AU45"])  # never define a peak (blinks)
    rules: str | None = None  # AU->emotion rules YAML; None: data_builders/rules/merr_au_rules.yaml
    speech_aware_peak: bool = True  # at voiced frames the mouth AUs (speech) never define the peak
    expression_model: str = "fer_mini_xception"  # learned expression voter (data_builders/expression); "none": off
    fusion: bool = True  # pseudo-label from every cue's vote (docs/builder.md); False: the AU rules alone
    workers: int = 1
    # --- cues and text (docs/builder.md, part 2) ---
    phrases: str | None = None  # AU->phrase table YAML; None: data_builders/phrases/au_phrases.yaml
    expression_max_aus: int = 5  # the strongest AUs present at the peak that the expression phrase names
    asr: Literal["none", "whisper"] = "none"  # subtitles from ASR (data.subtitles_csv, when given, wins)
    whisper_model: str = "base"  # openai-whisper model: a name (from the local whisper cache) or a .pt path
    whisper_language: str | None = None  # e.g. "en"; None: detected per clip
    tone: Literal["none", "prosody"] = "prosody"  # audio tone phrase from prosody features
    silence_dbfs: float = -55.0  # audio whose loudest 50 ms frame is below this is "silent_audio"
    describe: bool = True  # the coarse description (MERR template) from the cues
    writer: WriterConfig = field(default_factory=WriterConfig)
    describer: DescriberConfig = field(default_factory=DescriberConfig)  # visual description of the peak frame
    instructions: bool = True  # instructions/<task>.jsonl (emotion, reason) from the records

    def validate(self) -> None:
        if self.au_source == "openface_csv" and not self.openface_dir:
            raise ConfigCheck("openface_dir", "au_source 'openface_csv' needs build.openface_dir")
        _positive(self, "expression_max_aus")
        _positive(self, "workers", "au_fps", "frame_max_side", "detect_max_side", "max_duration_s", "peak_top_aus")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigCheck("min_confidence", f"must be in [0, 1], got {self.min_confidence}")
        if not 0.0 <= self.baseline_percentile <= 100.0:
            raise ConfigCheck("baseline_percentile", f"must be in [0, 100], got {self.baseline_percentile}")
        if not 0.0 < self.presence_threshold <= 5.0:
            raise ConfigCheck("presence_threshold", f"must be in (0, 5], got {self.presence_threshold}")


@dataclass
class FeaturesConfig:
    """The feature cache (`emollm features`): each frozen encoder once per clip."""

    cache_dir: str | None = None  # default: <data.dataset_dir>/features
    batch_size: int = 8  # clips decoded together; each encoder runs once per batch of clips
    dtype: Literal["float32", "float16", "bfloat16"] = "float16"  # storage dtype; read back as float32
    device: str | None = None  # None: cuda (cuda:LOCAL_RANK under accelerate launch) when available, else cpu
    on_missing: Literal["error", "skip"] = "error"  # a clip without a cache entry: stop, or train without that modality (counted)

    def validate(self) -> None:
        _positive(self, "batch_size")


@dataclass
class BackboneConfig:
    """The LLM: any causal LM by local path or hub id, loaded as transformers does."""

    name_or_path: str = ""
    template: str | None = None  # chat template name; None: chosen from the checkpoint's family
    revision: str | None = None
    torch_dtype: TorchDtype = "auto"
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"
    trust_remote_code: bool = False  # only when the user asks: it runs the checkpoint's own code


@dataclass
class EncoderConfig:
    """One modality (placeholder ``<name>``): its encoder, feature shape, projector and prompt span.

    Frozen kinds (visual / face / video / audio / text) are HF checkpoints run once per clip by the
    feature cache (text reads the record's subtitle); ``au`` is the learned AU encoder, trained with
    the model (its options: num_tokens, hidden_size, depth, num_heads, max_frames).
    """

    modality: Modality | None = None  # None: the entry's name when that is a modality ("audio", "face", ...)
    name_or_path: str | None = None  # None only for the learned AU encoder
    options: dict[str, Any] = field(default_factory=dict)  # encoder options (see docs/model.md)
    feature_dim: int | None = None  # None: read from the checkpoint's config
    num_input_tokens: int | None = None  # feature rows per clip; None: asked from the encoder
    projector: str | None = None  # None: model.projector
    projector_options: dict[str, Any] = field(default_factory=dict)  # e.g. {regroup: 4, cls_token: separate}
    span_prefix: str = ""  # text around this modality's media tokens in the prompt
    span_suffix: str = ""
    span_tail: str | None = None  # a second placeholder <span_tail> that holds the last span_tail_tokens media tokens
    span_tail_tokens: int = 1  # (Emotion-LLaMA: the EVA CLS token, projected last, written after the other features)

    def validate(self) -> None:
        if self.modality is None:
            raise ConfigCheck("modality", f"set the modality: one of {list(typing.get_args(Modality))}")
        if self.modality != "au" and not self.name_or_path:
            raise ConfigCheck("name_or_path", f"a '{self.modality}' encoder needs a checkpoint path or hub id")
        if self.modality == "au" and self.name_or_path:
            raise ConfigCheck("name_or_path", "the AU encoder is learned with the model: it has no checkpoint")
        _positive(self, "feature_dim", "num_input_tokens", "span_tail_tokens")
        if self.span_tail is not None and not re.fullmatch(r"[a-z][a-z0-9_]*", self.span_tail):
            raise ConfigCheck("span_tail", f"must be a lowercase identifier (it becomes <name>), got {self.span_tail!r}")


@dataclass
class FusionSettings:
    depth: int = 0  # 0: no fusion; >0: a cross-modal transformer over all modality tokens
    num_heads: int = 8

    def validate(self) -> None:
        if self.depth < 0:
            raise ConfigCheck("depth", f"must be >= 0, got {self.depth}")
        _positive(self, "num_heads")


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    encoders: dict[str, EncoderConfig] = field(default_factory=dict)
    projector: str = "linear"  # default projector of every modality (registry: linear, mlp2x_gelu, ...)
    prompt_tokens: int = 0  # learned tokens marking the start of each modality span
    fusion: FusionSettings = field(default_factory=FusionSettings)
    missing_modality: Literal["drop", "zero"] = "zero"  # a clip without a modality: drop its span or zero it

    def __post_init__(self) -> None:
        modalities = typing.get_args(Modality)
        for name, encoder in self.encoders.items():
            if encoder.modality is None and name in modalities:
                encoder.modality = name  # `encoders: {audio: {name_or_path: ...}}` needs no modality line

    def validate(self) -> None:
        if self.prompt_tokens < 0:
            raise ConfigCheck("prompt_tokens", f"must be >= 0, got {self.prompt_tokens}")
        for name in self.encoders:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ConfigCheck(f"encoders.{name}", "modality names are lowercase identifiers (they become <name> placeholders)")
        tails = [e.span_tail for e in self.encoders.values() if e.span_tail]
        for name, encoder in self.encoders.items():
            if encoder.span_tail and (encoder.span_tail in self.encoders or tails.count(encoder.span_tail) > 1):
                raise ConfigCheck(f"encoders.{name}.span_tail",
                                  f"'{encoder.span_tail}' is already a placeholder of another modality")


@dataclass
class LoraSettings:
    enabled: bool = True
    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: the backbone family's default

    def validate(self) -> None:
        _positive(self, "r", "alpha")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigCheck("dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class GrpoConfig:
    """``train.stage: grpo``: reinforcement learning with verifiable rewards after SFT (docs/training.md "GRPO")."""

    num_generations: int = 4  # G: sampled answers per prompt (the group)
    max_new_tokens: int = 32
    temperature: float = 1.0  # sampling temperature (> 0); the log-probabilities use the same
    top_p: float = 1.0
    beta: float = 0.04  # KL to the reference policy (the SFT run); 0: no reference forward
    epsilon: float = 0.2  # clip range of the policy ratio
    num_iterations: int = 1  # optimizer steps per batch of rollouts (mu)
    rewards: dict[str, float] = field(default_factory=lambda: {"format": 0.5, "accuracy": 1.0})  # name: weight
    answer_format: Literal["label", "think_answer"] = "label"  # what the format reward checks
    scale_rewards: bool = True  # divide the advantage by the group's std (+ eps)
    log_rollouts: int = 4  # rollouts written to logs/rollouts-<step>.jsonl at each logging step (0: none)

    def validate(self) -> None:
        from emollm.training.rewards import REWARDS

        _positive(self, "num_generations", "max_new_tokens", "temperature", "num_iterations")
        if self.num_generations < 2:
            raise ConfigCheck("num_generations", f"a group needs >= 2 answers (advantages are relative), got {self.num_generations}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigCheck("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.beta < 0:
            raise ConfigCheck("beta", f"must be >= 0, got {self.beta}")
        if not 0.0 < self.epsilon < 1.0:
            raise ConfigCheck("epsilon", f"must be in (0, 1), got {self.epsilon}")
        if self.log_rollouts < 0:
            raise ConfigCheck("log_rollouts", f"must be >= 0, got {self.log_rollouts}")
        for name, weight in self.rewards.items():
            if name not in REWARDS:
                raise ConfigCheck("rewards", f"unknown reward '{name}' (registered: {', '.join(sorted(REWARDS))})")
            if weight < 0:
                raise ConfigCheck("rewards", f"weight of '{name}' must be >= 0, got {weight}")
        if not any(weight > 0 for weight in self.rewards.values()):
            raise ConfigCheck("rewards", "needs at least one reward with a weight > 0 (e.g. {format: 0.5, accuracy: 1.0})")


@dataclass
class TrainConfig:
    """`accelerate launch train.py` settings."""

    stage: Literal[1, 2, "grpo"] = 1
    init_from: str | None = None  # stage 2 starts from stage 1's run dir; grpo from an SFT run dir
    tasks: list[str] = field(default_factory=lambda: ["emotion", "reason"])
    lr: float = 2e-4
    projector_lr: float | None = None  # None: same as lr
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = 1.0
    max_length: int = 1024
    bf16: bool = False
    fp16: bool = False
    gradient_checkpointing: bool = False
    # None: reentrant under DeepSpeed ZeRO-3 with frozen weights (LoRA / media-only), non-reentrant otherwise
    gradient_checkpointing_reentrant: bool | None = None
    full_finetune: bool = False
    quantization: Literal["none", "4bit", "8bit"] = "none"  # QLoRA: the backbone loaded by bitsandbytes
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"  # 4bit only
    bnb_4bit_compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # 4bit; auto: bf16/fp16 if on, else backbone dtype
    bnb_4bit_use_double_quant: bool = True  # 4bit: quantise the quantisation constants too (~0.4 bit/param saved)
    lora: LoraSettings = field(default_factory=LoraSettings)
    deepspeed: str | None = None  # a train_configs/deepspeed/*.json
    save_steps: int = 500
    logging_steps: int = 10
    save_total_limit: int | None = None  # keep only the newest K checkpoint-<step> dirs (None: all)
    resume: str | None = None  # "latest" (newest checkpoint under run.output_dir) or a checkpoint dir
    allow_resume_change: bool = False  # resume on another world size / per-device batch / accumulation (data order differs)
    report_to: list[str] = field(default_factory=list)  # accelerate trackers, e.g. [tensorboard]; jsonl always
    dataloader_num_workers: int = 0
    eval_steps: int | None = None  # evaluate on data.eval_split every N optimizer steps and at the end (None/0: never)
    eval_max_samples: int | None = 64  # a fixed, seeded subset of the eval split's clips (None: all): bounded cost
    eval_max_new_tokens: int = 32  # the emotion answer is short
    eval_loss: bool = True  # teacher-forced loss on the eval split beside the generation metrics
    grpo: GrpoConfig = field(default_factory=GrpoConfig)  # stage grpo only

    def validate(self) -> None:
        _positive(
            self, "lr", "projector_lr", "epochs", "max_steps", "per_device_batch_size",
            "gradient_accumulation_steps", "max_length", "save_steps", "logging_steps", "save_total_limit",
            "eval_max_samples", "eval_max_new_tokens",
        )  # fmt: skip
        if self.eval_steps is not None and self.eval_steps < 0:
            raise ConfigCheck("eval_steps", f"must be >= 0 (0 or null: no evaluation), got {self.eval_steps}")
        if self.dataloader_num_workers < 0:
            raise ConfigCheck("dataloader_num_workers", f"must be >= 0, got {self.dataloader_num_workers}")
        if self.bf16 and self.fp16:
            raise ConfigCheck("fp16", "bf16 and fp16 cannot both be true")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigCheck("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if self.stage == 2 and not self.init_from:
            raise ConfigCheck("init_from", "stage 2 starts from a stage-1 run dir: set train.init_from")
        if self.stage == "grpo":
            if not self.init_from:
                raise ConfigCheck("init_from", "stage grpo starts from a supervised (SFT) run dir: set train.init_from")
        if self.full_finetune and self.lora.enabled:
            raise ConfigCheck("full_finetune", "full fine-tuning and LoRA exclude each other; set train.lora.enabled=false")
        if self.quantization != "none" and not self.lora.enabled:
            raise ConfigCheck("quantization", f"{self.quantization} weights train only through LoRA (QLoRA)")
        if self.quantization != "4bit":
            for key, default in (("bnb_4bit_quant_type", "nf4"), ("bnb_4bit_compute_dtype", "auto"),
                                 ("bnb_4bit_use_double_quant", True)):
                if getattr(self, key) != default:
                    raise ConfigCheck(key, f"applies to train.quantization=4bit only (it is {self.quantization})")
        if not self.tasks:
            raise ConfigCheck("tasks", "needs at least one task")


@dataclass
class PredictConfig:
    """Generation for `predict` / `infer`."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    num_beams: int = 1
    batch_size: int = 4
    # `infer`: which entry of the task's instruction pool (prompts/instructions/<task>.txt) every clip is
    # asked with, 0-based; a clip's file name never changes its prompt
    instruction: int = 0

    def validate(self) -> None:
        _positive(self, "max_new_tokens", "num_beams", "batch_size")
        if self.instruction < 0:
            raise ConfigCheck("instruction", f"must be >= 0 (an index into the instruction pool), got {self.instruction}")
        if self.temperature < 0:
            raise ConfigCheck("temperature", f"must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigCheck("top_p", f"must be in (0, 1], got {self.top_p}")


@dataclass
class JudgeConfig:
    """The EMER reasoning judge (clue / label overlap, 1-10): an LLM asked in two steps."""

    backend: Literal["none", "openai", "hf"] = "none"  # none: no EMER scores (proxies still run)
    base_url: str = "http://127.0.0.1:8000/v1"  # openai: any OpenAI-compatible endpoint
    model: str = ""  # openai: the served model name; hf: a local causal LM path
    api_key_env: str | None = "OPENAI_API_KEY"  # the env var holding the key (null: no key sent)
    concurrency: int = 4  # judge calls in flight at once
    max_retries: int = 2  # extra attempts after a timeout, an HTTP error or a reply without a score
    backoff_s: float = 1.0  # wait before retry n: backoff_s * 2**(n-1)
    timeout_s: float = 60.0  # per HTTP request
    max_new_tokens: int = 256
    cache_dir: str | None = None  # None: <out>/judge_cache; replies keyed by sha256(backend, model, prompt)
    retry_invalid: bool = False  # re-ask prompts whose cached reply had no valid score

    def validate(self) -> None:
        _positive(self, "concurrency", "timeout_s", "max_new_tokens")
        if self.max_retries < 0 or self.backoff_s < 0:
            raise ConfigCheck("max_retries", "max_retries and backoff_s must be >= 0")
        if self.backend != "none" and not self.model:
            raise ConfigCheck("model", f"judge backend '{self.backend}' needs evaluate.judge.model")


@dataclass
class EvaluateConfig:
    label_set: LabelSetName | None = None  # a shipped set's name or a YAML path; None: data.label_set
    # free text -> label (emollm/dataset/label_parsing.py): reasoning (negation-aware, the concluding clause preferred;
    # English and Chinese) | last_word | first_mention | synonym | emotion_llama (their verbatim rule)
    parse: Literal["reasoning", "last_word", "first_mention", "synonym", "emotion_llama"] = "reasoning"
    # language of the texts scored: auto (detected from the texts) | en | zh; picks the judge prompts and,
    # in a references file with both (AffectGPT's final-EMER-reason.csv), the reasoning column
    language: Literal["auto", "en", "zh"] = "auto"
    fallback_label: str | None = "neutral"  # unparsable answers; null counts them as wrong
    folds: int = 1
    allow_missing: bool = False  # ids on one side only: counted in the report instead of an error
    proxies: bool = True  # offline reasoning proxies (emotion-word set metrics) when references have reasoning
    embedding_model: str | None = None  # local sentence-embedding model path: reasoning similarity proxy
    split: str | None = None  # references from a built dataset: only the records of this split (None: all)
    score_field: str | None = None  # regression references: the field holding the score (None: score|sentiment)
    # references of a label: auto (a human label where given, else a pseudo-label) | label (human only) |
    # pseudo_label (pseudo-labels only); each source is scored and reported on its own
    reference_source: Literal["auto", "label", "pseudo_label"] = "auto"
    combine_sources: bool = False  # also score human labels and pseudo-labels together (an "all" row)
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def validate(self) -> None:
        _positive(self, "folds")
        _check_label_set(self, "label_set")


@dataclass
class BaselineConfig:
    """`emollm baseline train|predict`: a non-LLM classifier (HLM12ERC, TelME, DMD) on the same built
    dataset and feature cache as the LLM; see docs/baselines.md. Seeded by run.seed, written to run.output_dir."""

    method: str = "hlm12erc"  # a registered baseline: hlm12erc | telme | dmd
    modalities: list[str] | None = None  # model.encoders names whose pooled features it reads; None: every non-AU one
    options: dict[str, Any] = field(default_factory=dict)  # the method's own options (docs/baselines.md)
    task: Literal["classification", "regression"] = "classification"  # classes of eval_label_set, or a score
    target_field: str | None = None  # regression: the clip-record field holding the score (e.g. sentiment)
    epochs: int | dict[str, int] = 30  # per stage, or {stage: epochs} for multi-stage methods (TelME)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    max_grad_norm: float | None = 1.0  # gradient clipping; null: off
    device: str = "auto"  # auto: cuda when available, else cpu
    eval_every: int = 1  # epochs between eval-split metrics (0: only after the last epoch)
    checkpoint_every: int = 1  # epochs between checkpoint-<epoch> dirs under run.output_dir
    save_total_limit: int | None = 2  # keep only the newest K checkpoints (None: all)
    resume: str | None = None  # "latest" (newest checkpoint under run.output_dir) or a checkpoint dir

    def validate(self) -> None:
        _positive(self, "lr", "batch_size", "max_grad_norm", "checkpoint_every", "save_total_limit")
        if self.weight_decay < 0:
            raise ConfigCheck("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.eval_every < 0:
            raise ConfigCheck("eval_every", f"must be >= 0, got {self.eval_every}")
        epochs = self.epochs.values() if isinstance(self.epochs, dict) else [self.epochs]
        if not epochs or any(e < 1 for e in epochs):
            raise ConfigCheck("epochs", f"must be >= 1 (per stage), got {self.epochs}")
        if self.task == "regression" and not self.target_field:
            raise ConfigCheck("target_field", "task 'regression' needs the record field holding the score",
                              hint="for example baseline.target_field=sentiment")
        if self.modalities is not None and not self.modalities:
            raise ConfigCheck("modalities", "needs at least one modality (null: every non-AU encoder)")


@dataclass
class EmollmConfig:
    """The root of every emollm config file."""

    schema_version: int = SCHEMA_VERSION
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)

    def validate(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise ConfigCheck(
                "schema_version",
                f"this emollm reads config schema {SCHEMA_VERSION}, the file says {self.schema_version}",
                hint="upgrade emollm, or rewrite the config for this version",
            )
        if self.train.init_from and self.train.init_from.rstrip("/") == self.run.output_dir.rstrip("/"):
            raise ConfigCheck("train.init_from", "must not be the run's own output_dir (it would be overwritten)")
        if self.train.quantization != "none" and self.train.deepspeed and "zero3" in self.train.deepspeed.replace("_", ""):
            raise ConfigCheck("train.quantization", "bitsandbytes quantization does not shard under ZeRO-3; use ZeRO-2")
        for name in self.baseline.modalities or ():
            if name not in self.model.encoders:
                raise ConfigCheck("baseline.modalities", f"'{name}' is not an encoder of model.encoders "
                                  f"({', '.join(self.model.encoders) or 'none configured'})")

    @property
    def eval_label_set(self) -> str:
        return self.evaluate.label_set or self.data.label_set
