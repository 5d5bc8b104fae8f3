"""``emollm render``: the exact prompt a model sees for a sample, and (with a tokenizer) its tokens
with the loss mask."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emollm.errors import EmollmError

NAME = "render"
HELP = "show the exact prompt (placeholders expanded) and, with a tokenizer, the tokens and loss mask"
DESCRIPTION = """\
Render a conversation with a chat template the way training and inference encode it.
--messages is a JSON file holding an instruction sample ({"id", "messages", "target"?, ...}) or a
list of {"role", "content"} messages. Placeholders <name> of the --spans modalities are expanded
to N media tokens <|emo_name|>.

Without --tokenizer: the prompt string only. With it: also one line per token
(index, id, piece; LOSS marks the tokens in the labels; a run of one media token is one line),
the text in the loss and the counts.

  emollm render --template llama2 --messages sample.json
  emollm render --tokenizer /models/Llama-2-7b-chat-hf --messages sample.json --spans video=4,audio=2
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", required=True, metavar="JSON", help="instruction sample or list of messages")
    parser.add_argument("--template", help="chat template name (default: guessed from --tokenizer)")
    parser.add_argument("--tokenizer", metavar="PATH", help="tokenizer directory or hub id (loaded by path, offline)")
    parser.add_argument("--spans", default="", metavar="NAME=N,...", help="media token count per modality")
    parser.add_argument("--missing", nargs="*", default=[], metavar="NAME",
                        help="modalities this clip lacks (see --missing-modality)")
    parser.add_argument("--missing-modality", choices=["drop", "zero"], default="drop",
                        help="drop: remove a missing modality's placeholder; zero: keep its tokens")
    parser.add_argument("--system", help="system prompt (overrides the sample's and the template's default)")


def _load_sample(path: str) -> dict:
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EmollmError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EmollmError(f"{path}: not a JSON file ({exc})") from None
    if isinstance(data, list):
        return {"id": file.stem, "messages": data}
    if isinstance(data, dict) and "messages" in data:
        return data
    raise EmollmError(f"{path}: expected an instruction sample with 'messages' or a list of messages")


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EmollmError(f"cannot load a tokenizer from {path}: {first}") from None


def _token_lines(tokenizer, input_ids: list[int], labels: list[int], media_ids: dict[int, str]) -> list[str]:
    lines = []
    pieces = tokenizer.convert_ids_to_tokens(input_ids)
    i = 0
    while i < len(input_ids):
        token_id = input_ids[i]
        if token_id in media_ids:  # collapse a run of one media token
            j = i
            while j < len(input_ids) and input_ids[j] == token_id:
                j += 1
            where = f"{i:>6}-{j - 1:<6}" if j - i > 1 else f"{i:>6}{'':7}"
            lines.append(f"{where}{token_id:>8}  {pieces[i]!r} x{j - i}  (media: {media_ids[token_id]})")
            i = j
            continue
        mark = "  LOSS" if labels[i] != -100 else ""
        lines.append(f"{i:>6}{'':7}{token_id:>8}  {pieces[i]!r}{mark}")
        i += 1
    return lines


def run(args: argparse.Namespace) -> int:
    from emollm.processing import EmoProcessor, parse_spans, prepare_messages
    from emollm.templates import IGNORE_INDEX, render_conversation, resolve_template

    sample = _load_sample(args.messages)
    if args.system is not None:
        messages = [m for m in sample["messages"] if not (isinstance(m, dict) and m.get("role") == "system")]
        sample = {**sample, "messages": [{"role": "system", "content": args.system}, *messages]}
    spans = parse_spans(args.spans)
    unknown = sorted(set(args.missing) - set(spans))
    if unknown:
        raise EmollmError(f"--missing names {unknown[0]!r}, which is not in --spans ({', '.join(spans) or 'none'})")
    present = set(spans) - set(args.missing)
    tokenizer = _load_tokenizer(args.tokenizer) if args.tokenizer else None
    if tokenizer is None and args.template is None:
        raise EmollmError("give --template NAME, or --tokenizer PATH to guess it from")
    template = resolve_template(args.template, tokenizer)

    if tokenizer is None:
        messages, _ = prepare_messages(sample, spans, present, args.missing_modality)
        print(f"== prompt ({template.name}) ==")
        print(render_conversation(template, messages))
        return 0

    processor = EmoProcessor(tokenizer, template, spans, missing_modality=args.missing_modality)
    prompt = processor.render(sample, present)
    encoded = processor.encode(sample, present)
    input_ids, labels = encoded["input_ids"], encoded["labels"]
    media_ids = {token_id: name for name, token_id in processor.media_token_ids.items()}
    loss_ids = [t for t, label in zip(input_ids, labels, strict=True) if label != IGNORE_INDEX]
    media_counts = {name: input_ids.count(token_id) for name, token_id in processor.media_token_ids.items()}
    print(f"== prompt ({template.name}) ==")
    print(prompt)
    print("== tokens (index, id, piece; LOSS = in the labels) ==")
    print("\n".join(_token_lines(tokenizer, input_ids, labels, media_ids)))
    print("== in the loss ==")
    print(tokenizer.decode(loss_ids) if loss_ids else "(nothing: no assistant answer)")
    media = ", ".join(f"{name}={count}" for name, count in media_counts.items()) or "none"
    print(f"tokens: {len(input_ids)}  loss tokens: {len(loss_ids)}  media tokens: {media}")
    return 0
