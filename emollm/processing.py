"""The processor: instruction samples -> token ids, labels and media tokens for the model.

An **instruction sample** is ``{"id", "task", "messages": [{"role", "content"}...], "target"?,
"label"?}``. Each modality placeholder ``<name>`` in the message text becomes, before tokenization,
``span.prefix + N × "<|emo_{name}|>" + span.suffix`` (``docs/model.md``); the media tokens are
special tokens this processor adds to the tokenizer, one id each; only these expansions are tokens (a
literal ``<|emo_video|>`` or ``</s>`` in the text stays text, and ``\\<video>`` is the escaped, literal
``<video>``: docs/templates.md). The conversation is then encoded
turn by turn by :func:`emollm.templates.encode_conversation`, so the labels cover exactly the
answer and its end token.

:meth:`EmoProcessor.encode` returns Python lists (cheap to store, e.g. in ``datasets.map``);
:meth:`EmoProcessor.collate` pads a batch into ``torch.long`` tensors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from emollm.errors import EmollmError
from emollm.log import get_logger
from emollm.templates import (
    IGNORE_INDEX,
    Template,
    TokenText,
    encode_conversation,
    render_conversation,
    resolve_template,
)

log = get_logger(__name__)

PROCESSOR_CONFIG = "emollm_processor.json"
PLACEHOLDER = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")
# A placeholder, or one escaped with a backslash (``\<audio>``: the literal text ``<audio>``, no media).
_PLACEHOLDER_OR_ESCAPED = re.compile(r"(\\?)<([A-Za-z_][A-Za-z0-9_]*)>")


def escape_placeholders(text: str) -> str:
    r"""``text`` with every ``<word>`` written ``\<word>``: clip content (subtitles, reasoning) put into
    a sample stays text and never becomes a media slot; the processor writes it back as ``<word>``."""
    return PLACEHOLDER.sub(r"\\<\1>", text)


def unescape_placeholders(text: str) -> str:
    r"""``\<word>`` -> ``<word>`` (what the model sees for escaped text)."""
    return _PLACEHOLDER_OR_ESCAPED.sub(lambda m: f"<{m.group(2)}>", text)


def _free_char(text: str, start: int) -> str:
    """A private-use character absent from ``text`` (a marker that cannot collide with the text)."""
    return next(chr(c) for c in range(start, 0xF8FF) if chr(c) not in text)


def media_token(name: str) -> str:
    """The special token of a modality: ``<|emo_{name}|>``."""
    return f"<|emo_{name}|>"


@dataclass(frozen=True)
class ModalitySpan:
    """How one modality appears in the prompt: ``prefix + num_tokens × media_token + suffix``.

    With ``tail`` (a second placeholder name) the modality's last ``tail_tokens`` media tokens are
    written where ``<tail>`` stands instead, and the span keeps the others: Emotion-LLaMA's EVA CLS
    token sits after the other features (``<video>…</video> <feature>…<video_cls></feature>``) while
    its 256 patch tokens fill ``<video>``. The model fills media tokens in text order, so the
    projector's last outputs (``cls_position: last``) land at ``<tail>``. Both placeholders are used
    together or not at all.
    """

    name: str
    num_tokens: int
    prefix: str = ""
    suffix: str = ""
    tail: str | None = None
    tail_tokens: int = 0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise EmollmError(f"modality name {self.name!r} must be letters, digits and '_' (it is used as <{self.name}>)")
        if not isinstance(self.num_tokens, int) or self.num_tokens < 1:
            raise EmollmError(f"modality {self.name!r}: num_tokens must be a positive integer, got {self.num_tokens!r}")
        if self.tail is None:
            if self.tail_tokens:
                raise EmollmError(f"modality {self.name!r}: tail_tokens={self.tail_tokens} needs a tail placeholder")
            return
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.tail) or self.tail == self.name:
            raise EmollmError(f"modality {self.name!r}: tail {self.tail!r} must be another placeholder name "
                              "(letters, digits and '_')")
        if not isinstance(self.tail_tokens, int) or not 0 < self.tail_tokens < self.num_tokens:
            raise EmollmError(f"modality {self.name!r}: tail_tokens must be between 1 and {self.num_tokens - 1}, "
                              f"got {self.tail_tokens!r}")

    @property
    def placeholder(self) -> str:
        return f"<{self.name}>"

    @property
    def token(self) -> str:
        return media_token(self.name)

    def expand(self) -> str:
        return self.prefix + self.token * (self.num_tokens - self.tail_tokens) + self.suffix

    def expand_tail(self) -> str:
        """What ``<tail>`` becomes: the modality's last ``tail_tokens`` media tokens."""
        return self.token * self.tail_tokens


def tails_of(spans: Mapping[str, ModalitySpan]) -> dict[str, ModalitySpan]:
    """``{tail placeholder name: its span}`` for the spans that have one."""
    return {span.tail: span for span in spans.values() if span.tail}


def parse_spans(text: str) -> dict[str, ModalitySpan]:
    """``"video=4,audio=2"`` -> spans (no prefix/suffix)."""
    spans: dict[str, ModalitySpan] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, count = item.partition("=")
        if not sep or not count.strip().isdigit():
            raise EmollmError(f"bad span {item!r}: expected NAME=COUNT, e.g. video=4,audio=2")
        spans[name.strip()] = ModalitySpan(name.strip(), int(count))
    return spans


def _join_dropped(match: re.Match, text: str) -> str:
    """Whitespace left where dropped placeholders were: none at the start/end of the text,
    else one of the surrounding runs (the one with a line break, if any)."""
    lead, trail = match.group(1), match.group(2)
    if match.start() == 0 or match.end() == len(text):
        return ""
    if "\n" in trail:
        return trail
    return lead or trail


def expand_placeholder_parts(
    text: str,
    spans: Mapping[str, ModalitySpan],
    present: set[str],
    missing_modality: str = "drop",
    seen: dict[str, int] | None = None,
) -> list[str | TokenText]:
    r"""Like :func:`expand_placeholders`, as parts: each expansion is a :class:`TokenText` (its media
    tokens are tokens), the text between is ``str`` (a control-token string in it, such as a literal
    ``<|emo_video|>``, stays text). ``\<word>`` is written as the literal ``<word>``."""
    expanded = _free_char(text, 0xE000)
    dropped = _free_char(text + expanded, 0xE000)
    expansions: list[str] = []
    tails = tails_of(spans)

    def replace(match: re.Match) -> str:
        escaped, name = match.group(1), match.group(2)
        span = spans.get(name) or tails.get(name)
        if escaped:
            return f"<{name}>"
        if span is None:
            log.debug("%r is not a configured modality; left as text", match.group(0))
            return match.group(0)
        if seen is not None:
            seen[name] = seen.get(name, 0) + 1
        if span.name in present or missing_modality == "zero":
            expansions.append(span.expand() if name == span.name else span.expand_tail())
            return expanded
        return dropped

    out = _PLACEHOLDER_OR_ESCAPED.sub(replace, text)
    if dropped in out:
        run = re.compile(rf"(\s*){re.escape(dropped)}(?:\s*{re.escape(dropped)})*(\s*)")
        out = run.sub(lambda m: _join_dropped(m, out), out)
    pieces = out.split(expanded)
    parts: list[str | TokenText] = [pieces[0]]
    for expansion, piece in zip(expansions, pieces[1:], strict=True):
        parts += [TokenText(expansion), piece]
    return [part for part in parts if part != ""]


def expand_placeholders(
    text: str,
    spans: Mapping[str, ModalitySpan],
    present: set[str],
    missing_modality: str = "drop",
    seen: dict[str, int] | None = None,
) -> str:
    r"""Replace configured placeholders: expanded when present (or under ``zero``), removed (with
    the whitespace around them) when missing under ``drop``; other ``<word>`` are left as text;
    ``\<word>`` (escaped) becomes the text ``<word>``. ``seen`` counts the configured placeholders met."""
    parts = expand_placeholder_parts(text, spans, present, missing_modality, seen)
    return "".join(part.text if isinstance(part, TokenText) else part for part in parts)


def prepare_messages(
    sample: Mapping[str, Any],
    spans: Mapping[str, ModalitySpan],
    present: set[str] | None = None,
    missing_modality: str = "drop",
) -> tuple[list[dict], set[str]]:
    """The sample's messages with ``target`` as the answer (when the last message is not the
    assistant's) and placeholders expanded; and the configured modalities that occur in them.
    User/system content becomes parts (:func:`expand_placeholder_parts`): only the expansions'
    media tokens are tokens; ``\\<word>`` is written as the text ``<word>`` (also in answers)."""
    sample_id = sample.get("id", "?")
    messages = sample.get("messages")
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise EmollmError(f"sample {sample_id}: 'messages' must be a non-empty list of {{role, content}}")
    messages = [dict(m) if isinstance(m, Mapping) else m for m in messages]
    target = sample.get("target")
    if target is not None and isinstance(messages[-1], dict) and messages[-1].get("role") != "assistant":
        messages.append({"role": "assistant", "content": str(target)})
    present = set(spans) if present is None else set(present)
    tails = tails_of(spans)
    seen: dict[str, int] = {}
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            continue  # encode_conversation reports it
        content = message["content"]
        if message.get("role") == "assistant":
            used = [m.group(0) for m in _PLACEHOLDER_OR_ESCAPED.finditer(content)
                    if (m.group(2) in spans or m.group(2) in tails) and not m.group(1)]
            if used:
                raise EmollmError(f"sample {sample_id}: media placeholder {used[0]} in an assistant message; "
                                  "media belong in the user (or system) text",
                                  hint=r"write \<name> for the literal text (escape_placeholders does it)")
            message["content"] = unescape_placeholders(content)
            continue
        message["content"] = expand_placeholder_parts(content, spans, present, missing_modality, seen)
    repeated = [name for name, count in seen.items() if count > 1]
    if repeated:
        raise EmollmError(f"sample {sample_id}: placeholder <{repeated[0]}> occurs {seen[repeated[0]]} times; "
                          "each modality may appear once per sample")
    for tail, span in tails.items():
        if (span.name in seen) != (tail in seen):
            raise EmollmError(f"sample {sample_id}: <{tail}> holds the last {span.tail_tokens} of <{span.name}>'s "
                              f"{span.num_tokens} media tokens: write both placeholders or neither")
    return messages, set(seen) - set(tails)


class EmoProcessor:
    """Turns instruction samples into model inputs for one backbone template and set of modalities.

    Args:
        tokenizer: the backbone's tokenizer; the media tokens are added to it (in place).
        template: a :class:`Template`, a registered name, or None to guess from the tokenizer.
        spans: ``{name: ModalitySpan}`` (or an iterable of spans) for the configured modalities.
        max_length: longest ``input_ids`` allowed (None: no limit).
        missing_modality: ``"drop"`` removes the placeholder of a modality the clip lacks (no tokens),
            ``"zero"`` keeps its tokens (the model writes zeros there).
        truncation: when a sample is longer than ``max_length``: ``"error"`` raises an EmollmError,
            ``"drop"`` logs a warning and returns None (the collator skips it). Nothing is cut: a
            media span or an answer is never shortened.

    After construction: ``media_token_ids`` (name -> id), ``num_added_tokens`` and
    ``vocab_grew`` (resize the model's embeddings to ``len(tokenizer)`` when True).
    """

    def __init__(
        self,
        tokenizer: Any,
        template: Template | str | None = None,
        spans: Mapping[str, ModalitySpan] | Iterable[ModalitySpan] = (),
        max_length: int | None = None,
        missing_modality: Literal["drop", "zero"] = "drop",
        truncation: Literal["error", "drop"] = "error",
    ):
        if missing_modality not in ("drop", "zero"):
            raise EmollmError(f"missing_modality must be 'drop' or 'zero', got {missing_modality!r}")
        if truncation not in ("error", "drop"):
            raise EmollmError(f"truncation must be 'error' or 'drop', got {truncation!r}")
        if max_length is not None and max_length < 1:
            raise EmollmError(f"max_length must be positive, got {max_length}")
        self.tokenizer = tokenizer
        self.template = resolve_template(template, tokenizer)
        if isinstance(spans, Mapping):
            for key, span in spans.items():
                if key != span.name:
                    raise EmollmError(f"span under key {key!r} is named {span.name!r}; they must match")
            spans = list(spans.values())
        self.spans: dict[str, ModalitySpan] = {span.name: span for span in spans}
        for tail, span in tails_of(self.spans).items():
            if tail in self.spans:
                raise EmollmError(f"modality {span.name!r}: its tail placeholder <{tail}> is also a modality's name")
        self.max_length = max_length
        self.missing_modality = missing_modality
        self.truncation = truncation
        self.num_added_tokens = self._add_media_tokens()
        self.vocab_grew = self.num_added_tokens > 0
        self.media_token_ids: dict[str, int] = {
            name: int(tokenizer.convert_tokens_to_ids(span.token)) for name, span in self.spans.items()
        }
        for name, span in self.spans.items():  # each media token must be one id, also inside text
            ids = tokenizer(f"a {span.token}{span.token}b", add_special_tokens=False).input_ids
            if ids.count(self.media_token_ids[name]) != 2:
                raise EmollmError(f"media token {span.token!r} does not tokenize to a single id with this tokenizer")

    def _add_media_tokens(self) -> int:
        tokens = [span.token for span in self.spans.values()]
        if not tokens:
            return 0
        before = len(self.tokenizer)
        self.tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_extra_special_tokens=False)
        added = len(self.tokenizer) - before
        if added:
            log.info("added %d media token(s) to the tokenizer: %s (vocabulary %d -> %d)",
                     added, ", ".join(tokens), before, len(self.tokenizer))
        return added

    @property
    def placeholders(self) -> list[str]:
        """Every placeholder name a prompt may use, in order: the modalities, then the tails."""
        return [*self.spans, *tails_of(self.spans)]

    @property
    def pad_token_id(self) -> int:
        """The padding id: the tokenizer's pad token, else its EOS (padding is masked anyway)."""
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        if pad is None:
            raise EmollmError("the tokenizer has neither a pad nor an eos token to pad with")
        return int(pad)

    # -- text ------------------------------------------------------------------------------
    def prepare_messages(self, sample: Mapping[str, Any], present: set[str] | None = None) -> tuple[list[dict], set[str]]:
        """See :func:`prepare_messages`."""
        return prepare_messages(sample, self.spans, present, self.missing_modality)

    def render(self, sample: Mapping[str, Any], present: set[str] | None = None) -> str:
        """The exact prompt string (placeholders expanded) the model sees for this sample."""
        messages, _ = self.prepare_messages(sample, present)
        return render_conversation(self.template, messages, tokenizer=self.tokenizer)

    # -- ids -------------------------------------------------------------------------------
    def encode(self, sample: Mapping[str, Any], present: set[str] | None = None) -> dict[str, Any] | None:
        """Encode one instruction sample.

        ``present``: the modalities this clip has (None: all configured). Returns
        ``{"id", "input_ids", "attention_mask", "labels"}`` (lists of int) and ``"media_present"``
        (sorted names of the modalities whose tokens are in the ids *and* whose features exist; under
        ``zero`` a missing modality has tokens but is not listed), or None when the sample is too
        long and ``truncation="drop"``.
        """
        sample_id = sample.get("id", "?")
        present = set(self.spans) if present is None else set(present)
        messages, used = self.prepare_messages(sample, present)
        try:
            input_ids, labels = encode_conversation(self.template, self.tokenizer, messages)
        except EmollmError as exc:
            raise EmollmError(f"sample {sample_id}: {exc.message}", hint=exc.hint) from None
        in_prompt = {name for name in used if name in present or self.missing_modality == "zero"}
        for name, token_id in self.media_token_ids.items():
            expected = self.spans[name].num_tokens if name in in_prompt else 0
            found = input_ids.count(token_id)
            if found != expected:
                raise EmollmError(f"sample {sample_id}: {found} {self.spans[name].token} token(s) in the ids, "
                                  f"expected {expected} (is the media token written literally in the text?)")
            if any(label == token_id for label in labels):
                raise EmollmError(f"sample {sample_id}: a {name} media token is in the labels")
        if self.max_length is not None and len(input_ids) > self.max_length:
            answer = sum(label != IGNORE_INDEX for label in labels)
            media = sum(input_ids.count(self.media_token_ids[n]) for n in in_prompt)
            message = (f"sample {sample_id}: {len(input_ids)} tokens is longer than max_length {self.max_length} "
                       f"({media} media tokens, {answer} answer tokens); samples are never cut")
            if self.truncation == "error":
                raise EmollmError(message, hint="raise max_length, shorten the text, or set truncation to 'drop'")
            log.warning("%s: skipped", message)
            return None
        return {
            "id": sample_id,
            "input_ids": input_ids,
            "attention_mask": [1] * len(input_ids),
            "labels": labels,
            "media_present": sorted(in_prompt & present),
        }

    __call__ = encode

    def collate(self, batch: Sequence[Mapping[str, Any] | None], pad_to_multiple_of: int | None = None,
                padding_side: Literal["right", "left"] = "right") -> dict[str, Any]:
        """Pad encoded samples into ``torch.long`` tensors ``(B, L)``: ``input_ids`` with
        :attr:`pad_token_id`, ``attention_mask`` 0, ``labels`` -100. ``media_present`` becomes
        ``{name: BoolTensor (B,)}`` for every configured modality; ``ids`` lists the sample ids.
        None entries (samples dropped as too long) are skipped. Training pads on the right;
        batched generation on the left, so every prompt ends where the new tokens begin."""
        import torch

        rows = [row for row in batch if row is not None]
        if not rows:
            raise EmollmError(f"no sample left in a batch of {len(batch)}: all were dropped as too long",
                              hint="raise max_length")
        length = max(len(row["input_ids"]) for row in rows)
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        pad = self.pad_token_id
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            span = slice(0, n) if padding_side == "right" else slice(length - n, length)
            input_ids[i, span] = torch.tensor(row["input_ids"], dtype=torch.long)
            attention[i, span] = torch.tensor(row["attention_mask"], dtype=torch.long)
            labels[i, span] = torch.tensor(row["labels"], dtype=torch.long)
        media_present = {
            name: torch.tensor([name in row.get("media_present", ()) for row in rows], dtype=torch.bool)
            for name in self.spans
        }
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
                "media_present": media_present, "ids": [row.get("id") for row in rows]}

    # -- run dir -------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Tokenizer (with the media tokens) + ``emollm_processor.json`` (template, spans, policies)."""
        from emollm.templates import template_fields

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(out)
        data = {
            "template": template_fields(self.template),
            "spans": [dataclasses.asdict(span) for span in self.spans.values()],
            "max_length": self.max_length,
            "missing_modality": self.missing_modality,
            "truncation": self.truncation,
            "media_token_ids": self.media_token_ids,
        }
        (out / PROCESSOR_CONFIG).write_text(json.dumps(data, indent=2), encoding="utf-8")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> EmoProcessor:
        """Load what :meth:`save_pretrained` wrote; the media tokens keep their ids."""
        from transformers import AutoTokenizer

        path = Path(directory)
        config_file = path / PROCESSOR_CONFIG
        if not config_file.is_file():
            raise EmollmError(f"{path} holds no {PROCESSOR_CONFIG}: not an emollm run or processor directory")
        data = json.loads(config_file.read_text(encoding="utf-8"))
        fields = data["template"]
        fields["stop_words"] = tuple(fields.get("stop_words") or ())
        processor = cls(
            AutoTokenizer.from_pretrained(path),
            Template(**fields),
            [ModalitySpan(**span) for span in data["spans"]],
            max_length=data["max_length"],
            missing_modality=data["missing_modality"],
            truncation=data["truncation"],
        )
        if processor.media_token_ids != data["media_token_ids"]:
            raise EmollmError(f"{path}: the tokenizer's media token ids {processor.media_token_ids} differ from the "
                              f"saved ones {data['media_token_ids']}; the directory was modified")
        return processor
