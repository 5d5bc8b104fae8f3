"""Chat templates as data, encoded turn by turn so the loss mask is exact by construction.

A :class:`Template` holds the per-role formats of one backbone family (LLaMA-Factory's
``register_template`` idea): how a user turn, an assistant answer and the system prompt are written,
where BOS goes, which token ends an answer, the default system prompt and the stop words.
:func:`encode_conversation` turns role/content messages into ``(input_ids, labels)``: every piece
is tokenized on its own (``add_special_tokens=False``) and BOS / the end token are added as ids, so
the labels cover exactly each assistant answer plus the token that ends it; nothing is inferred by
counting lengths (LLaVA's "tokenization mismatch"). Only the template puts control tokens in: a
control-token string (``</s>``, ``<|eot_id|>``, ``<|im_start|>``...) in message text is encoded as its
characters (docs/templates.md "Only the template writes control tokens").

Registered: ``llama2`` (LLaMA-2-chat), ``emotion_llama`` (Emotion-LLaMA's MiniGPT-v2 prompt on LLaMA-2), ``mistral`` (Mistral-7B-Instruct v0.1/v0.2), ``mistral_v3``
(Mistral-7B-Instruct v0.3 and later ``[INST]`` layouts), ``llama3`` (LLaMA-3-Instruct), ``chatml``
(Qwen2-style), ``smollm2`` (ChatML with SmolLM2's default system prompt). See docs/templates.md to add one.
"""

from __future__ import annotations

import dataclasses
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from emollm.errors import EmollmError
from emollm.log import get_logger

log = get_logger(__name__)

IGNORE_INDEX = -100
_CONTENT = "{content}"


@dataclass(frozen=True)
class Template:
    """One chat format. Format strings hold ``{content}`` once; other text in them is literal
    (special tokens such as ``<|start_header_id|>`` are written as text and must be single tokens).

    Layout of a conversation (``|`` separates pieces; ``[..]`` are ids added explicitly)::

        [BOS] system-turn? | user | assistant_prefix | answer [END] | separator | user | ...

    - ``format_user``: a user turn (``llama2``: ``"[INST] {content} [/INST]"``).
    - ``assistant_prefix``: text that opens the assistant turn, not in the loss; also the
      generation prompt (``llama3``: ``"<|start_header_id|>assistant<|end_header_id|>\\n\\n"``).
    - ``format_assistant``: the answer (in the loss), followed by the end token id (in the loss).
    - ``separator``: text after the end token, before the next turn (not in the loss; ``chatml``: ``"\\n"``).
    - ``format_system`` + ``system_placement``: ``"first_user"`` puts the formatted system text in
      front of the first user message's content (inside ``format_user``); ``"last_user"`` in front of
      the last user message's (Mistral v0.3, as ``mistral_common`` does); ``"turn"`` writes it as a
      turn of its own before the first user turn.
    - ``bos``: ``"once"`` (start of the conversation), ``"every_user_turn"`` (``llama2``: before each
      ``[INST]``), or ``"none"``. The id is ``tokenizer.bos_token_id``.
    - ``end_token``: the token that ends an answer; ``None`` = the tokenizer's EOS. It is appended
      after every answer and is always in the labels (LLaMA-Factory's ``efficient_eos`` concern:
      the model must learn to stop, so the end token is never left out of the loss).
    - ``strip_content``: strip the (system-merged) user text and the answer, as the official template does;
      ``strip_answer``: strip only the answer (Mistral v0.3's ``content|trim``).
    - ``bos_text`` / ``end_text``: how BOS / the end token are written when rendering without a tokenizer.
    - ``stop_words``: tokens at which generation stops (besides ``end_token``).
    - ``separate_segments``: tokenize each text run between explicit ids (BOS, the end token, media
      tokens) on its own, with the tokenizer's start-of-text treatment (sentencepiece's leading
      ``▁``), as MiniGPT-v2 / Emotion-LLaMA do (``tokenizer(seg, add_special_tokens=False)`` per
      segment around the image embeddings, the answer separately). Default False: every piece is
      tokenized in its real left context, as the chat template's string would be.
    """

    name: str
    format_user: str
    format_assistant: str = _CONTENT
    assistant_prefix: str = ""
    separator: str = ""
    format_system: str = _CONTENT
    system_placement: Literal["first_user", "last_user", "turn"] = "turn"
    strip_system: bool = False
    default_system: str | None = None
    bos: Literal["once", "every_user_turn", "none"] = "once"
    end_token: str | None = None
    strip_content: bool = False
    strip_answer: bool = False
    bos_text: str | None = None
    end_text: str | None = None
    stop_words: tuple[str, ...] = ()
    separate_segments: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        for field in ("format_user", "format_assistant", "format_system"):
            value = getattr(self, field)
            if value.count(_CONTENT) != 1:
                raise EmollmError(f"template {self.name!r}: {field} must contain {_CONTENT} exactly once, got {value!r}")
        if self.system_placement not in ("first_user", "last_user", "turn"):
            raise EmollmError(f"template {self.name!r}: system_placement must be 'first_user', 'last_user' or 'turn'")
        if self.bos not in ("once", "every_user_turn", "none"):
            raise EmollmError(f"template {self.name!r}: bos must be 'once', 'every_user_turn' or 'none'")

    # -- ids ---------------------------------------------------------------------------------
    def bos_id(self, tokenizer: Any) -> int | None:
        if self.bos == "none":
            return None
        token_id = tokenizer.bos_token_id
        if token_id is None and self.bos_text:
            token_id = _single_token_id(tokenizer, self.bos_text, self.name, "BOS")
        if token_id is None:
            raise EmollmError(
                f"template {self.name!r} starts with BOS but the tokenizer has no bos_token",
                hint="pick the template of this checkpoint's family (model.backbone.template)",
            )
        return int(token_id)

    def end_id(self, tokenizer: Any) -> int:
        if self.end_token is not None:
            return _single_token_id(tokenizer, self.end_token, self.name, "end token")
        if tokenizer.eos_token_id is None:
            raise EmollmError(f"template {self.name!r} ends answers with EOS but the tokenizer has no eos_token")
        return int(tokenizer.eos_token_id)

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Ids at which generation stops: the end token, the tokenizer's EOS and the stop words."""
        ids = [self.end_id(tokenizer)]
        if tokenizer.eos_token_id is not None:
            ids.append(int(tokenizer.eos_token_id))
        for word in self.stop_words:
            token_id = tokenizer.convert_tokens_to_ids(word)
            if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
                ids.append(token_id)
        return list(dict.fromkeys(ids))


def _single_token_id(tokenizer: Any, token: str, template: str, what: str) -> int:
    ids = tokenizer(token, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise EmollmError(
            f"template {template!r}: its {what} {token!r} is not a single token of this tokenizer "
            f"(it tokenizes to {len(ids)} ids)",
            hint="pick the template of this checkpoint's family (set model.backbone.template)",
        )
    return int(ids[0])


# -- registry --------------------------------------------------------------------------------
_TEMPLATES: dict[str, Template] = {}


def register_template(name: str, *, overwrite: bool = False, **fields: Any) -> Template:
    """Register a template by its fields (see :class:`Template`) and return it."""
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise EmollmError(f"template name {name!r} must be letters, digits, '_', '-' or '.'")
    if name in _TEMPLATES and not overwrite:
        raise EmollmError(f"template {name!r} is already registered", hint="pass overwrite=True to replace it")
    template = Template(name=name, **fields)
    _TEMPLATES[name] = template
    return template


def get_template(name: str) -> Template:
    try:
        return _TEMPLATES[name]
    except KeyError:
        raise EmollmError(
            f"unknown chat template {name!r}; registered: {', '.join(list_templates())}",
            hint="set model.backbone.template to one of them, or register_template(...) your own",
        ) from None


def list_templates() -> list[str]:
    return sorted(_TEMPLATES)


register_template(
    "llama2",
    description="LLaMA-2-chat: <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s>",
    format_user="[INST] {content} [/INST]",
    format_assistant=" {content} ",
    format_system="<<SYS>>\n{content}\n<</SYS>>\n\n",
    system_placement="first_user",
    bos="every_user_turn",
    strip_content=True,
    bos_text="<s>",
    end_text="</s>",
)
register_template(
    "mistral",
    description="Mistral-7B-Instruct v0.1/v0.2: <s>[INST] {user} [/INST]{answer}</s>; the official template "
    "has no system role, so the system prompt is put in front of the first user message, then a blank line",
    format_user="[INST] {content} [/INST]",
    format_system="{content}\n\n",
    system_placement="first_user",
    bos="once",
    bos_text="<s>",
    end_text="</s>",
)
register_template(
    "mistral_v3",
    description="Mistral-7B-Instruct v0.3: <s>[INST] {user}[/INST] {answer}</s> (no space before [/INST], one "
    "before the stripped answer); the system prompt goes in front of the LAST user message, then a blank line",
    format_user="[INST] {content}[/INST]",
    format_assistant=" {content}",
    format_system="{content}\n\n",
    system_placement="last_user",
    bos="once",
    strip_answer=True,
    bos_text="<s>",
    end_text="</s>",
)
register_template(
    "emotion_llama",
    description="Emotion-LLaMA (MiniGPT-v2 on LLaMA-2-chat): <s>[INST] {user} [/INST]{answer}</s>; no system "
    "prompt; the text between media tokens, and the answer, each tokenized on its own as MiniGPT-v2 does",
    format_user="[INST] {content} [/INST]",
    bos="every_user_turn",
    bos_text="<s>",
    end_text="</s>",
    separate_segments=True,
)
register_template(
    "llama3",
    description="LLaMA-3-Instruct: header ids, each turn ends with <|eot_id|>",
    format_user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
    assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
    format_system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
    system_placement="turn",
    strip_system=True,
    bos="once",
    end_token="<|eot_id|>",
    strip_content=True,
    bos_text="<|begin_of_text|>",
    end_text="<|eot_id|>",
    stop_words=("<|eot_id|>", "<|end_of_text|>"),
)
register_template(
    "chatml",
    description="ChatML as Qwen2-Instruct: <|im_start|>{role}\\n{content}<|im_end|>\\n, no BOS",
    format_user="<|im_start|>user\n{content}<|im_end|>\n",
    assistant_prefix="<|im_start|>assistant\n",
    separator="\n",
    format_system="<|im_start|>system\n{content}<|im_end|>\n",
    system_placement="turn",
    default_system="You are a helpful assistant.",
    bos="none",
    end_token="<|im_end|>",
    end_text="<|im_end|>",
    stop_words=("<|im_end|>", "<|endoftext|>"),
)
register_template(
    "smollm2",
    **{
        **{k: v for k, v in dataclasses.asdict(get_template("chatml")).items() if k != "name"},
        "description": "ChatML as SmolLM2-Instruct: chatml with SmolLM2's own default system prompt",
        "default_system": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    },
)


# -- guessing the family ---------------------------------------------------------------------
def _hint_set() -> str:
    return "set model.backbone.template to one of: " + ", ".join(list_templates())


def _family_template(family: Any) -> str | None:
    return family.template if family is not None else None


def template_for(tokenizer_or_config: Any) -> Template:
    """Guess the template from a tokenizer (its chat_template, then its special tokens, then its
    name) or from a model config (``model_type``, and the vocabulary size for ``llama``): the
    backbone-family registry (:mod:`emollm.modeling.backbones`) decides, this only asks it."""
    # emollm.modeling's package init loads torch: imported here so this module stays light
    from emollm.modeling import backbones

    obj = tokenizer_or_config
    name = None
    what = type(obj).__name__
    if hasattr(obj, "convert_tokens_to_ids"):  # a tokenizer
        family, claimed = backbones.family_from_chat_template(getattr(obj, "chat_template", None))
        if family is None:
            family = backbones.family_from_vocab(obj)
        if family is None and not claimed:  # a known family's unregistered layout: never a name guess
            family = backbones.family_from_name(getattr(obj, "name_or_path", ""))
        name = _family_template(family)
        what = f"tokenizer {getattr(obj, 'name_or_path', '') or what}"
    elif hasattr(obj, "model_type") or isinstance(obj, Mapping):
        name = _family_template(backbones.family_from_config(obj))
        model_type = obj.get("model_type") if isinstance(obj, Mapping) else obj.model_type
        what = f"model config (model_type {model_type!r})"
    if name is None:
        raise EmollmError(f"cannot tell which chat template fits the {what}", hint=_hint_set())
    log.debug("chat template guessed for %s: %s", what, name)
    return get_template(name)


def resolve_template(template: Template | str | None, tokenizer: Any = None) -> Template:
    """A Template from a Template, a registered name, or (None) a guess from the tokenizer."""
    if isinstance(template, Template):
        return template
    if isinstance(template, str):
        return get_template(template)
    if tokenizer is None:
        raise EmollmError("no chat template given and no tokenizer to guess it from", hint=_hint_set())
    return template_for(tokenizer)


# -- conversation → pieces -------------------------------------------------------------------
@dataclass(frozen=True)
class TokenText:
    """Text in a message whose special tokens are meant as tokens: what emollm itself inserts (the
    processor's media tokens). Message content is a ``str`` or a list of ``str`` / ``TokenText``;
    every ``str`` is content, whose special-token strings are tokenized as plain text."""

    text: str


@dataclass(frozen=True)
class Piece:
    """A text piece or a special id (``special`` names which: ``"bos"`` or ``"end"``). ``content``:
    the text came from a message (not from the template), so a control-token string in it is text."""

    text: str = ""
    special: str | None = None
    loss: bool = False
    content: bool = False


Parts = list[tuple[str, bool]]  # (text, is_content)


def _content_parts(content: str | Sequence[str | TokenText]) -> Parts:
    if isinstance(content, str):
        return [(content, True)]
    return [(part.text, False) if isinstance(part, TokenText) else (part, True) for part in content]


def _content_text(content: Any) -> str | None:
    """The text of a message's content (str, or a list of str / TokenText), None when malformed."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and all(isinstance(p, (str, TokenText)) for p in content):
        return "".join(p.text if isinstance(p, TokenText) else p for p in content)
    return None


def _strip_parts(parts: Parts) -> Parts:
    """``str.strip`` across parts: the text is stripped as a whole, wherever its parts begin and end."""
    parts = [p for p in parts if p[0]]
    while parts and not parts[0][0].strip():
        parts.pop(0)
    while parts and not parts[-1][0].strip():
        parts.pop()
    if parts:
        parts[0] = (parts[0][0].lstrip(), parts[0][1])
        parts[-1] = (parts[-1][0].rstrip(), parts[-1][1])
    return parts


def _format(fmt: str, parts: Parts) -> Parts:
    """``fmt`` with ``{content}`` replaced by the parts; the format's own text is template text."""
    head, _, tail = fmt.partition(_CONTENT)
    return [(head, False), *parts, (tail, False)]


def _check_messages(messages: Sequence[Mapping[str, Any]], system: str | None) -> tuple[str | None, list[dict]]:
    messages = [dict(m) for m in messages]
    for i, message in enumerate(messages):
        if _content_text(message.get("content")) is None or message.get("role") not in ("system", "user", "assistant"):
            raise EmollmError(
                f"message {i} must be {{'role': 'system'|'user'|'assistant', 'content': str}}, got {message!r}"[:300]
            )
    if messages and messages[0]["role"] == "system":
        first = messages.pop(0)
        if system is None:
            system = first["content"]
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise EmollmError(
                f"message {i + (1 if system is not None else 0)} has role {message['role']!r}; after an optional "
                "system message, roles must alternate user/assistant starting with user"
            )
    if not messages:
        raise EmollmError("a conversation needs at least one user message")
    return system, messages


def conversation_pieces(
    template: Template,
    messages: Sequence[Mapping[str, Any]],
    system: str | Sequence[str | TokenText] | None = None,
    add_generation_prompt: bool | None = None,
) -> list[Piece]:
    """The conversation as pieces, each marked in or out of the loss.

    ``system`` overrides a leading system message; with neither, the template's default system
    prompt is used. ``add_generation_prompt`` (default: when the last message is the user's)
    appends the assistant prefix so the model answers next.
    """
    system, turns = _check_messages(messages, system)
    if system is None:
        system = template.default_system
    ends_with_user = turns[-1]["role"] == "user"
    if add_generation_prompt is None:
        add_generation_prompt = ends_with_user
    pieces: list[Piece] = []

    def add(parts: Parts, loss: bool = False) -> None:
        pieces.extend(Piece(text, loss=loss, content=is_content) for text, is_content in parts)

    if template.bos == "once":
        pieces.append(Piece(special="bos"))
    system_parts = _content_parts(system) if system is not None else []
    if system is not None and template.system_placement == "turn":
        add(_format(template.format_system, _strip_parts(system_parts) if template.strip_system else system_parts))
    system_turn = None  # index of the user turn that carries the system prompt
    if system is not None and template.system_placement == "first_user":
        system_turn = 0
    elif system is not None and template.system_placement == "last_user":
        system_turn = max(i for i, m in enumerate(turns) if m["role"] == "user")
    for i, message in enumerate(turns):
        parts = _content_parts(message["content"])
        if message["role"] == "user":
            if i == system_turn:
                parts = _format(template.format_system, system_parts) + parts
            if template.strip_content:
                parts = _strip_parts(parts)
            if template.bos == "every_user_turn":
                pieces.append(Piece(special="bos"))
            add(_format(template.format_user, parts))
        else:
            if template.strip_content or template.strip_answer:
                parts = _strip_parts(parts)
            if template.assistant_prefix:
                pieces.append(Piece(template.assistant_prefix))
            add(_format(template.format_assistant, parts), loss=True)
            pieces.append(Piece(special="end", loss=True))
            if template.separator:
                pieces.append(Piece(template.separator))
    if ends_with_user and add_generation_prompt and template.assistant_prefix:
        pieces.append(Piece(template.assistant_prefix))
    return [p for p in pieces if p.special or p.text]


def render_conversation(
    template: Template,
    messages: Sequence[Mapping[str, Any]],
    system: str | None = None,
    add_generation_prompt: bool | None = None,
    tokenizer: Any = None,
) -> str:
    """The conversation as the string the model sees (BOS / end tokens written as text: the
    tokenizer's when given, else the template's ``bos_text`` / ``end_text``)."""
    out = []
    for piece in conversation_pieces(template, messages, system, add_generation_prompt):
        if piece.special is None:
            out.append(piece.text)
        elif tokenizer is not None:
            token_id = template.bos_id(tokenizer) if piece.special == "bos" else template.end_id(tokenizer)
            out.append(tokenizer.convert_ids_to_tokens(token_id))
        else:
            text = template.bos_text if piece.special == "bos" else template.end_text
            if text is None:
                raise EmollmError(f"template {template.name!r} needs a tokenizer to write its {piece.special} token")
            out.append(text)
    return "".join(out)


# -- tokenization ----------------------------------------------------------------------------
def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _plain_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids)


_CONTROLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def control_tokens(tokenizer: Any) -> list[str]:
    """The tokenizer's special-token strings (BOS/EOS, added special tokens such as ``<|eot_id|>``,
    ``<|im_start|>``, Mistral v0.3's ``[INST]``, the media tokens): only a template puts them in."""
    tokens = set(getattr(tokenizer, "all_special_tokens", None) or ())
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    tokens |= {str(t) for t in decoder.values() if getattr(t, "special", False)}
    return sorted((t for t in tokens if t), key=lambda t: (-len(t), t))


def _controls(tokenizer: Any) -> tuple[re.Pattern | None, frozenset[int]]:
    """(regex of the control-token strings, longest first as the tokenizer matches them; their ids
    except UNK, which ordinary text may also give). Cached per tokenizer and vocabulary size."""
    size = len(tokenizer)
    try:
        cached = _CONTROLS.get(tokenizer)
    except TypeError:  # not weak-referenceable: no cache
        cached = None
    if cached is not None and cached[0] == size:
        return cached[1], cached[2]
    tokens = control_tokens(tokenizer)
    pattern = re.compile("|".join(re.escape(t) for t in tokens)) if tokens else None
    ids = {tokenizer.convert_tokens_to_ids(t) for t in tokens} - {tokenizer.unk_token_id, None}
    result = (pattern, frozenset(i for i in ids if isinstance(i, int)))
    try:
        _CONTROLS[tokenizer] = (size, *result)
    except TypeError:
        pass
    return result


def _literal_ids(tokenizer: Any, text: str, control_ids: frozenset[int], template: str) -> list[int]:
    """The ids of a control-token string written in a message: its characters as plain text
    (``split_special_tokens``), tokenized after a letter so no start-of-text space marker is added."""
    base, full = _plain_ids(tokenizer, "a"), _plain_ids(tokenizer, "a" + text)
    ids = full[len(base):] if full[: len(base)] == base else _plain_ids(tokenizer, text)
    if any(i in control_ids for i in ids):  # a tokenizer that ignores split_special_tokens: char by char
        ids = [i for ch in text for i in _plain_ids(tokenizer, "a" + ch)[len(base):]]
    if not ids or any(i in control_ids for i in ids):
        raise EmollmError(f"template {template!r}: this tokenizer cannot write {text!r} as plain text",
                          hint="remove that control-token string from the message text")
    return ids


def _segment_ids(tokenizer: Any, text: str, pattern: re.Pattern | None) -> list[int]:
    """Ids of ``text`` with every control token (the template's, the media tokens) as its id and each
    run of text between them tokenized alone."""
    ids: list[int] = []
    pos = 0
    for match in (pattern.finditer(text) if pattern is not None else ()):
        if match.start() > pos:
            ids += _ids(tokenizer, text[pos:match.start()])
        ids.append(int(tokenizer.convert_tokens_to_ids(match.group(0))))
        pos = match.end()
    if pos < len(text):
        ids += _ids(tokenizer, text[pos:])
    return ids


def encode_conversation(
    template: Template,
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    system: str | Sequence[str | TokenText] | None = None,
    add_generation_prompt: bool | None = None,
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of a conversation; labels are ``-100`` except the assistant answers
    and the end token after each.

    Each text piece is tokenized with ``add_special_tokens=False`` in its real left context: the
    text since the last explicit id, preceded by that id's token string (sentencepiece tokenizers
    treat text after a special token and at the start of a string differently, and a piece that
    continues a line, like Mistral's answer right after ``[/INST]``, must not gain a leading
    ``▁``). The ids of the context must be a prefix of the ids of context + piece; if a merge
    crosses the boundary, an EmollmError is raised rather than a silently shifted mask.

    Only the template inserts control tokens: in message text (``str`` content: subtitles, answers,
    system prompts, instructions) a control-token string of the tokenizer (:func:`control_tokens`,
    e.g. ``</s>``, ``<|eot_id|>``, ``<|im_start|>``) is encoded as its characters
    (``split_special_tokens``); the text around it is tokenized as it would be around the real token.
    Text without such a string is encoded exactly as before. The count of control ids is checked
    against what the template (and :class:`TokenText` parts) put in.
    """
    pattern, control_ids = _controls(tokenizer)
    items: list[tuple[str, str, bool]] = []  # (kind: "text" | "bos" | "end" | "literal", text, loss)
    expected = 0  # control tokens the template (and TokenText) put in: the only ones the ids may hold
    for piece in conversation_pieces(template, messages, system, add_generation_prompt):
        if piece.special is not None:
            items.append((piece.special, "", piece.loss))
            continue
        pos = 0
        if pattern is not None and piece.content:  # a control-token string in message text is text
            for match in pattern.finditer(piece.text):
                items.append(("text", piece.text[pos:match.start()], piece.loss))
                items.append(("literal", match.group(0), piece.loss))
                pos = match.end()
        elif pattern is not None:
            expected += len(pattern.findall(piece.text))
        items.append(("text", piece.text[pos:], piece.loss))
    merged: list[tuple[str, str, bool]] = []  # adjacent text of one side of the loss mask, as one run
    for kind, text, loss in items:
        if kind == "text" and merged and merged[-1][0] == "text" and merged[-1][2] == loss:
            merged[-1] = ("text", merged[-1][1] + text, loss)
        elif kind != "text" or text:
            merged.append((kind, text, loss))

    input_ids: list[int] = []
    labels: list[int] = []
    anchor = ""  # token string of the last explicit id ("" at the very start)
    context = ""  # text since the last explicit id
    context_ids: list[int] = []
    for kind, text, loss in merged:
        if kind in ("bos", "end"):
            token_id = template.bos_id(tokenizer) if kind == "bos" else template.end_id(tokenizer)
            new = [token_id]
            expected += token_id in control_ids
            anchor, context, context_ids = tokenizer.convert_ids_to_tokens(token_id), "", []
        elif kind == "literal":
            # its characters, as plain text; what follows is tokenized as after the real token, so
            # only these ids differ from the tokenization of the string
            new = _literal_ids(tokenizer, text, control_ids, template.name)
            anchor, context, context_ids = text, "", []
        elif template.separate_segments:
            # MiniGPT-v2: each run between special ids is tokenized alone (its own start-of-text '▁')
            new = _segment_ids(tokenizer, text, pattern)
            anchor, context, context_ids = "", "", []
        else:
            full = _ids(tokenizer, anchor + context + text)
            head = _ids(tokenizer, anchor) if anchor else []
            if full[: len(head)] != head:
                raise EmollmError(
                    f"template {template.name!r}: {anchor!r} does not tokenize as one token before {text[:40]!r}"
                )
            full = full[len(head):]
            if full[: len(context_ids)] != context_ids:
                raise EmollmError(
                    f"template {template.name!r}: the tokenizer merges across the boundary before "
                    f"{text[:40]!r}, so the loss mask cannot be placed exactly",
                    hint="check the template's formats against the checkpoint's chat_template",
                )
            new = full[len(context_ids):]
            context, context_ids = context + text, full
        input_ids.extend(new)
        labels.extend(new if loss else [IGNORE_INDEX] * len(new))
    found = sum(token_id in control_ids for token_id in input_ids)
    if found != expected:  # message text glued to the template's text formed (or broke) a control token
        raise EmollmError(
            f"template {template.name!r}: {found} control token(s) in the ids where the template puts {expected}; "
            "a message's text joins the template's text into a control token",
            hint="remove the partial control-token string (e.g. '<|eot_id' or '[/INST') from the message text",
        )
    return input_ids, labels


def template_fields(template: Template) -> dict[str, Any]:
    """The template's fields as a plain dict (for saving next to a run)."""
    return dataclasses.asdict(template)
