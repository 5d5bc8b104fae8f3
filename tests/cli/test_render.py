"""`emollm render`: the exact prompt, the tokens with the loss mask, counts, one-line errors."""

from __future__ import annotations

import json

import pytest

from emollm.cli import main as cli
from emollm.testing.tiny import build_tiny_models

SAMPLE = {
    "id": "clip_001",
    "task": "emotion",
    "messages": [{"role": "user", "content": "<video> <audio> The person in video says: Hi. [emotion] Which emotion?"}],
    "target": "surprise",
}


@pytest.fixture
def sample_file(tmp_path):
    path = tmp_path / "sample.json"
    path.write_text(json.dumps(SAMPLE))
    return path


def test_render_without_tokenizer_prints_the_prompt_string(sample_file, capsys):
    code = cli.main(["render", "--template", "llama2", "--messages", str(sample_file), "--spans", "video=3,audio=2"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1] == (
        "<s>[INST] <|emo_video|><|emo_video|><|emo_video|> <|emo_audio|><|emo_audio|> The person in video says: Hi. "
        "[emotion] Which emotion? [/INST] surprise </s>"
    )


def test_render_a_list_of_messages_with_system_and_a_missing_modality(tmp_path, capsys):
    path = tmp_path / "msgs.json"
    path.write_text(json.dumps([{"role": "system", "content": "Be brief."}, SAMPLE["messages"][0]]))
    code = cli.main(["render", "--template", "llama3", "--messages", str(path), "--spans", "video=3,audio=2",
                     "--missing", "audio"])
    assert code == 0
    prompt = capsys.readouterr().out.split("\n", 1)[1]
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    assert "<|emo_video|><|emo_video|><|emo_video|> The person" in prompt and "emo_audio" not in prompt
    assert prompt.rstrip("\n").endswith("<|start_header_id|>assistant<|end_header_id|>")  # ready to generate


def test_render_with_tokenizer_marks_the_loss_tokens_and_counts(sample_file, capsys):
    tiny = build_tiny_models(names=["llama2"])
    code = cli.main(["render", "--tokenizer", str(tiny.llama2), "--messages", str(sample_file),
                     "--spans", "video=3,audio=2"])
    assert code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "== prompt (llama2) ==" and "[/INST] surprise </s>" in lines[1]
    loss_lines = [line for line in lines if line.endswith("LOSS")]
    assert loss_lines[-1].endswith("'</s>'  LOSS") and len(loss_lines) >= 2
    assert not any("INST" in line for line in loss_lines)
    assert any("'<|emo_video|>' x3  (media: video)" in line for line in lines)
    assert lines[lines.index("== in the loss ==") + 1] == "surprise </s>"
    counts = lines[-1]
    total = sum(1 for line in lines if line[:6].strip().isdigit()) + (3 - 1) + (2 - 1)  # a media run is one line
    assert counts == f"tokens: {total}  loss tokens: {len(loss_lines)}  media tokens: video=3, audio=2"


def test_render_errors_are_one_line(tmp_path, sample_file, capsys):
    assert cli.main(["render", "--messages", str(tmp_path / "missing.json"), "--template", "llama2"]) == 2
    assert "error: " in capsys.readouterr().err
    assert cli.main(["render", "--messages", str(sample_file)]) == 2
    assert "give --template NAME, or --tokenizer PATH" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli.main(["render", "--messages", str(bad), "--template", "llama2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: not a JSON file") and "Traceback" not in err
    assert cli.main(["render", "--messages", str(sample_file), "--template", "llama2", "--spans", "video=x"]) == 2
    assert "NAME=COUNT" in capsys.readouterr().err
