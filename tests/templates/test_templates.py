"""Chat templates: golden equality with each family's official chat_template, exact loss masks."""

from __future__ import annotations

import copy

import pytest
from transformers import AutoTokenizer

from emollm import templates as T
from emollm.errors import EmollmError
from emollm.testing.tiny import build_tiny_models

# Qwen2-7B-Instruct's chat_template (the ChatML family), verbatim.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SYS = {"role": "system", "content": "You are an expert in emotion analysis."}
U1 = {"role": "user", "content": "How does the person in the video feel today?"}
A1 = {"role": "assistant", "content": "The person feels happy."}
U2 = {"role": "user", "content": "Why do you think so?"}
A2 = {"role": "assistant", "content": "Because the person smiles and the voice is bright."}
U_WS = {"role": "user", "content": "  What is the emotion?\n"}
A_WS = {"role": "assistant", "content": " It is surprise. "}

CONVERSATIONS = {
    "single": [U1, A1],
    "system": [SYS, U1, A1],
    "multi": [U1, A1, U2, A2],
    "multi_system": [SYS, U1, A1, U2, A2],
    "generation": [U1, A1, U2],
    "generation_system": [SYS, U1],
    "whitespace": [U_WS, A_WS],
}
FAMILIES = ["llama2", "mistral", "llama3", "chatml"]


@pytest.fixture(scope="module")
def tokenizers():
    tiny = build_tiny_models(names=["llama2", "mistral", "llama3"])
    toks = {name: AutoTokenizer.from_pretrained(tiny[name]) for name in ("llama2", "mistral", "llama3")}
    chatml = AutoTokenizer.from_pretrained(tiny.llama3)
    chatml.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]},
                              replace_extra_special_tokens=False)
    chatml.chat_template = QWEN2_CHAT_TEMPLATE
    toks["chatml"] = chatml
    return toks


def official_text(tok, family: str, messages: list[dict]) -> str:
    """The family's official rendering. Mistral's template has no system role (it raises), so
    emollm's documented choice is checked against it with the system merged into the first user turn."""
    if family == "mistral" and messages[0]["role"] == "system":
        first = {"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
        messages = [first, *messages[2:]]
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=messages[-1]["role"] == "user")


@pytest.mark.parametrize("conv", list(CONVERSATIONS))
@pytest.mark.parametrize("family", FAMILIES)
def test_golden_string_and_ids_equal_the_official_chat_template(tokenizers, family, conv):
    tok, template, messages = tokenizers[family], T.get_template(family), CONVERSATIONS[conv]
    expected = official_text(tok, family, messages)
    ids, labels = T.encode_conversation(template, tok, messages)
    assert T.render_conversation(template, messages, tokenizer=tok) == expected
    assert tok.decode(ids) == expected
    assert ids == tok(expected, add_special_tokens=False).input_ids
    assert len(labels) == len(ids)


@pytest.mark.parametrize("family", ["llama2", "mistral", "llama3"])
def test_string_form_without_a_tokenizer_equals_the_official_template(tokenizers, family):
    messages = CONVERSATIONS["multi_system"]
    assert T.render_conversation(T.get_template(family), messages) == official_text(tokenizers[family], family, messages)


def test_mistral_official_template_has_no_system_role_so_it_goes_into_the_first_user_turn(tokenizers):
    with pytest.raises(Exception, match="roles must alternate|Only user and assistant"):
        tokenizers["mistral"].apply_chat_template([SYS, U1], tokenize=False)
    text = T.render_conversation(T.get_template("mistral"), [SYS, U1, A1])
    assert text.startswith(f"<s>[INST] {SYS['content']}\n\n{U1['content']} [/INST]")
    assert text.count("[INST]") == 1


def _label_runs(ids, labels):
    runs, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label == T.IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    return runs + ([current] if current else [])


END_TEXT = {"llama2": "</s>", "mistral": "</s>", "llama3": "<|eot_id|>", "chatml": "<|im_end|>"}
ANSWER_FORMAT = {"llama2": " {} ", "mistral": "{}", "llama3": "{}", "chatml": "{}"}  # as the official templates


@pytest.mark.parametrize("conv", ["single", "multi_system", "whitespace"])
@pytest.mark.parametrize("family", FAMILIES)
def test_labels_are_exactly_each_answer_and_its_end_token(tokenizers, family, conv):
    tok, template, messages = tokenizers[family], T.get_template(family), CONVERSATIONS[conv]
    ids, labels = T.encode_conversation(template, tok, messages)
    strip = family in ("llama2", "llama3")  # their official templates strip the content
    answers = [m["content"].strip() if strip else m["content"] for m in messages if m["role"] == "assistant"]
    runs = _label_runs(ids, labels)
    assert len(runs) == len(answers)
    end_id = template.end_id(tok)
    for run, answer in zip(runs, answers, strict=True):
        assert run[-1] == end_id and run.count(end_id) == 1
        assert tok.decode(run).strip() == (ANSWER_FORMAT[family].format(answer) + END_TEXT[family]).strip()
    # nothing of the prompt is in the loss: the unlabelled tokens decode to the text without the answers
    prompt_only = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab == T.IGNORE_INDEX])
    assert not any(answer.strip() in prompt_only for answer in answers)
    assert U1["content"] in prompt_only or U_WS["content"].strip() in prompt_only


@pytest.mark.parametrize("family", FAMILIES)
def test_a_generation_prompt_has_no_labels_and_ends_where_the_answer_starts(tokenizers, family):
    tok, template = tokenizers[family], T.get_template(family)
    ids, labels = T.encode_conversation(template, tok, [U1])
    assert set(labels) == {T.IGNORE_INDEX}
    full, _ = T.encode_conversation(template, tok, [U1, A1])
    assert full[: len(ids)] == ids  # the answer continues the generation prompt token for token


def test_roles_must_alternate_starting_with_user(tokenizers):
    with pytest.raises(EmollmError, match="alternate"):
        T.encode_conversation(T.get_template("llama3"), tokenizers["llama3"], [A1, U1])
    with pytest.raises(EmollmError, match="at least one user"):
        T.render_conversation(T.get_template("llama2"), [SYS])


def test_template_for_guesses_the_family_from_tokenizer_or_config(tokenizers):
    for family in FAMILIES:
        assert T.template_for(tokenizers[family]).name == family
    assert T.template_for({"model_type": "mistral"}).name == "mistral"
    assert T.template_for({"model_type": "qwen2"}).name == "chatml"
    assert T.template_for({"model_type": "llama", "vocab_size": 128256}).name == "llama3"
    assert T.template_for({"model_type": "llama", "vocab_size": 32000}).name == "llama2"
    bare = copy.deepcopy(tokenizers["llama3"])
    bare.chat_template = None  # still recognised by its special tokens
    assert T.template_for(bare).name == "llama3"
    with pytest.raises(EmollmError) as err:
        T.template_for({"model_type": "gpt2"})
    assert "model.backbone.template" in err.value.hint


def test_registry_lists_gets_and_registers_templates(tokenizers):
    assert {"llama2", "mistral", "llama3", "chatml"} <= set(T.list_templates())
    with pytest.raises(EmollmError, match="unknown chat template 'vicuna'.*llama2"):
        T.get_template("vicuna")
    with pytest.raises(EmollmError, match="already registered"):
        T.register_template("llama2", format_user="{content}")
    with pytest.raises(EmollmError, match="exactly once"):
        T.register_template("broken-template", format_user="USER:")
    try:
        custom = T.register_template("plain-test", format_user="USER: {content}\n", assistant_prefix="ASSISTANT:",
                                     format_assistant=" {content}", separator="\n", bos="once")
        tok = tokenizers["llama2"]
        ids, labels = T.encode_conversation(custom, tok, [U1, A1])
        assert tok.decode(ids) == f"<s>USER: {U1['content']}\nASSISTANT: {A1['content']}</s>\n"
        assert tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != -100]) == A1["content"] + "</s>"
    finally:
        T._TEMPLATES.pop("plain-test", None)


def test_stop_token_ids_include_the_answer_end(tokenizers):
    tok = tokenizers["llama3"]
    stops = T.get_template("llama3").stop_token_ids(tok)
    assert stops[0] == tok.convert_tokens_to_ids("<|eot_id|>") and tok.convert_tokens_to_ids("<|end_of_text|>") in stops
    assert T.get_template("llama2").stop_token_ids(tokenizers["llama2"]) == [tokenizers["llama2"].eos_token_id]


def test_a_template_whose_end_token_the_tokenizer_lacks_is_reported(tokenizers):
    with pytest.raises(EmollmError, match="not a single token"):
        T.encode_conversation(T.get_template("chatml"), tokenizers["llama2"], [U1, A1])


@pytest.mark.parametrize("family", ["llama2", "mistral"])
def test_ids_stay_exact_with_a_legacy_sentencepiece_normalizer(tokenizers, family):
    """The hub's Mistral tokenizer.json prepends '▁' to every text run (normalizer Prepend + Replace):
    then text after a special token gains '▁' but Mistral's answer right after '[/INST]' must not."""
    from tokenizers import normalizers

    tok = copy.deepcopy(tokenizers[family])
    tok.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.backend_tokenizer.pre_tokenizer = None
    messages = CONVERSATIONS["multi"]
    expected = official_text(tok, family, messages)
    ids, labels = T.encode_conversation(T.get_template(family), tok, messages)
    assert ids == tok(expected, add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids)[1] == "▁["  # the legacy behaviour is really in effect
    assert len(_label_runs(ids, labels)) == 2
