"""Tiny LLaMA-2-chat, Mistral-Instruct and LLaMA-3-Instruct shaped causal LMs, with tokenizers trained here.

Each builder writes, into an empty directory, what the hub checkpoint of that family holds:
``config.json``, ``generation_config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json`` (with the family's real ``chat_template`` inline, as the hub files have it) and,
for the two sentencepiece families, ``tokenizer.model``.

transformers 5 notes (see docs/fixtures.md):
- ``LlamaTokenizer`` is a BPE ``tokenizers`` backend now; it can only represent a sentencepiece *BPE*
  model (a unigram ``tokenizer.model`` does not convert), and converting a bare ``tokenizer.model``
  needs ``protobuf``. So the sentencepiece model is trained here, and ``tokenizer.json`` is written from
  its pieces (vocab + merges, as transformers' own converter does); ``tokenizer.model`` is kept next to
  it, as the hub checkpoints have it. Loading then never needs protobuf.
- ``save_pretrained`` drops ``add_bos_token`` / ``add_eos_token`` from ``tokenizer_config.json``, and
  ``from_pretrained`` ignores them whenever ``tokenizer.json`` exists: BOS comes from the post-processor
  in ``tokenizer.json``, and ``tokenizer.add_bos_token`` reads False on a reloaded LLaMA tokenizer even
  though BOS is added. They are written back anyway (with ``padding_side: right``) so the files look
  like the hub ones.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

from emollm.testing.tiny._common import seeded_init
from emollm.testing.tiny.corpus import corpus

# ---- the real chat templates (verbatim from the hub tokenizer_config.json files) ----------------------

#: meta-llama/Llama-2-7b-chat-hf
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

#: mistralai/Mistral-7B-Instruct-v0.1 / v0.2 (the original template: no system role)
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

#: meta-llama/Meta-Llama-3-8B-Instruct
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# LLaMA-3's pre-tokenizer split pattern (tokenizer.json of Meta-Llama-3-8B).
LLAMA3_SPLIT_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def llama3_special_tokens(n_reserved: int = 11) -> list[str]:
    """The LLaMA-3 special tokens in their real order (ids base+0 ... base+15 for the default 11 reserved)."""
    tokens = ["<|begin_of_text|>", "<|end_of_text|>"]
    tokens += [f"<|reserved_special_token_{i}|>" for i in range(4)]
    tokens += ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    tokens += [f"<|reserved_special_token_{i}|>" for i in range(5, n_reserved)]
    return tokens


@dataclass(frozen=True)
class LlmShape:
    """The shape of one tiny causal LM (the real family's ratios, scaled down)."""

    family: str
    config_class: str  # "LlamaConfig" | "MistralConfig"
    vocab_size: int  # of the trained tokenizer's base vocabulary
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5


LLAMA2 = LlmShape(
    "llama2",
    "LlamaConfig",
    vocab_size=1000,
    intermediate_size=172,
    num_key_value_heads=4,
    max_position_embeddings=4096,
    rope_theta=10000.0,
)
MISTRAL = LlmShape(
    "mistral",
    "MistralConfig",
    vocab_size=800,
    intermediate_size=224,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
)
LLAMA3 = LlmShape(
    "llama3",
    "LlamaConfig",
    vocab_size=1000,
    intermediate_size=224,
    num_key_value_heads=2,
    max_position_embeddings=8192,
    rope_theta=500000.0,
)


# ---- tokenizers ------------------------------------------------------------------------------------------


def train_sentencepiece(vocab_size: int, lines: list[str]) -> bytes:
    """A LLaMA-style sentencepiece BPE model (byte fallback, split digits, no normalization), as bytes.

    Single-threaded and unshuffled: the same bytes on every run.
    """
    import sentencepiece as spm

    spm.set_random_generator_seed(1234)
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        character_coverage=1.0,
        max_sentence_length=4192,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_surface=" \u2047 ",
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return out.getvalue()


def bpe_merges(vocab: dict[str, int], skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """The merges of a sentencepiece BPE model, recovered from its pieces.

    Every split of a piece into two pieces of the vocabulary is a merge, ranked by the merged piece's id
    (sentencepiece BPE ids follow merge order), then by the length of the left half: the order
    transformers' own sentencepiece converter produces (``generate_merges``), without needing protobuf.
    """
    ranked = []
    for piece, rank in vocab.items():
        if piece in skip:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab and left not in skip and right not in skip:
                ranked.append((rank, len(left), len(right), left, right))
    ranked.sort(key=lambda item: item[:3])
    return [(left, right) for *_, left, right in ranked]


def _sentencepiece_tokenizer(model_bytes: bytes, chat_template: str):
    """A transformers ``LlamaTokenizer`` equivalent to the sentencepiece model (built without protobuf)."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = bpe_merges(vocab, skip=("<unk>", "<s>", "</s>"))
    return LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        add_bos_token=True,
        add_eos_token=False,
        legacy=False,
        chat_template=chat_template,
    )


def _patch_json(path: Path, **updates) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(updates)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def save_sentencepiece_tokenizer(out: Path, vocab_size: int, chat_template: str):
    """Train and save a LLaMA-2 / Mistral tokenizer into ``out``; returns the tokenizer object."""
    model_bytes = train_sentencepiece(vocab_size, corpus())
    tok = _sentencepiece_tokenizer(model_bytes, chat_template)
    tok.save_pretrained(out, save_jinja_files=False)
    (out / "tokenizer.model").write_bytes(model_bytes)
    # As in the hub tokenizer_config.json files (transformers 5 leaves these two out when saving).
    _patch_json(out / "tokenizer_config.json", add_bos_token=True, add_eos_token=False, padding_side="right")
    return tok


def train_llama3_tokenizer(base_vocab_size: int):
    """A LLaMA-3-style byte-level BPE ``tokenizers.Tokenizer`` with the special tokens after the base vocab."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=base_vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    base = tok.get_vocab_size()
    if base != base_vocab_size:  # the corpus is too small for the requested vocabulary
        raise RuntimeError(f"byte-level BPE reached {base} tokens, not {base_vocab_size}")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in llama3_special_tokens()])
    bos = "<|begin_of_text|>"
    bos_id = tok.token_to_id(bos)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
            ),
        ]
    )
    return tok


def save_llama3_tokenizer(out: Path, base_vocab_size: int):
    """Train and save the LLaMA-3-Instruct tokenizer into ``out``; returns the tokenizer object."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_llama3_tokenizer(base_vocab_size),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        model_input_names=["input_ids", "attention_mask"],
        # The hub file says True; transformers 5 ignores it for BPE and warns on every decode.
        clean_up_tokenization_spaces=False,
        chat_template=LLAMA3_CHAT_TEMPLATE,
    )
    tok.save_pretrained(out, save_jinja_files=False)
    # The hub file names the class PreTrainedTokenizerFast (an alias of TokenizersBackend in transformers 5).
    _patch_json(out / "tokenizer_config.json", tokenizer_class="PreTrainedTokenizerFast")
    return tok


# ---- models ----------------------------------------------------------------------------------------------


def _save_causal_lm(out: Path, shape: LlmShape, vocab_size: int, bos: int, eos: int, gen_eos, seed: int) -> None:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    common = dict(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        rms_norm_eps=shape.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
        hidden_act="silu",
        initializer_range=0.02,
        tie_word_embeddings=False,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=None,
        use_cache=True,
    )
    if shape.config_class == "MistralConfig":
        config, model_class = MistralConfig(sliding_window=None, **common), MistralForCausalLM
    else:
        config, model_class = LlamaConfig(attention_bias=False, mlp_bias=False, **common), LlamaForCausalLM
    model = seeded_init(model_class, config, seed)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=gen_eos)
    model.save_pretrained(out)


def build_llama2(out: Path, seed: int) -> None:
    tok = save_sentencepiece_tokenizer(out, LLAMA2.vocab_size, LLAMA2_CHAT_TEMPLATE)
    _save_causal_lm(out, LLAMA2, len(tok), tok.bos_token_id, tok.eos_token_id, tok.eos_token_id, seed)


def build_mistral(out: Path, seed: int) -> None:
    tok = save_sentencepiece_tokenizer(out, MISTRAL.vocab_size, MISTRAL_CHAT_TEMPLATE)
    _save_causal_lm(out, MISTRAL, len(tok), tok.bos_token_id, tok.eos_token_id, tok.eos_token_id, seed)


def build_llama3(out: Path, seed: int) -> None:
    tok = save_llama3_tokenizer(out, LLAMA3.vocab_size)
    end_of_text = tok.convert_tokens_to_ids("<|end_of_text|>")
    # As Meta-Llama-3-8B-Instruct: config eos = <|eot_id|>; generation stops on either.
    _save_causal_lm(out, LLAMA3, len(tok), tok.bos_token_id, tok.eos_token_id, [end_of_text, tok.eos_token_id], seed)
