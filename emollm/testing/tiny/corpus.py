"""A deterministic English-ish corpus about emotions, faces and voices, for training the tiny tokenizers.

Made in code from word lists and sentence templates, with a fixed-seed generator that only draws from
``random.Random.random()`` (the one method whose sequence Python promises to keep across versions), so
the same text comes out on every machine and every Python, and the tokenizers trained on it are the same
byte for byte. It covers digits, punctuation, quotes and mixed case, so ordinary English round-trips
through the tokenizers without falling back to bytes for every character.
"""

from __future__ import annotations

import random
import string

_SUBJECTS = [
    "the woman",
    "the man",
    "she",
    "he",
    "the speaker",
    "the child",
    "my friend",
    "the actor",
    "the old man",
    "the young woman",
    "the teacher",
    "the patient",
    "they",
    "I",
    "you",
    "we",
    "the girl",
    "the boy",
    "the interviewer",
    "the doctor",
    "her brother",
    "his mother",
    "the stranger",
    "the singer",
    "the driver",
]
_EMOTIONS = [
    "happy",
    "sad",
    "angry",
    "surprised",
    "afraid",
    "disgusted",
    "neutral",
    "worried",
    "calm",
    "excited",
    "nervous",
    "anxious",
    "content",
    "frustrated",
    "bored",
    "proud",
    "ashamed",
    "confused",
    "relieved",
    "hopeful",
    "tired",
    "jealous",
    "lonely",
    "grateful",
    "annoyed",
    "cheerful",
    "tense",
    "upset",
    "joyful",
    "scared",
    "furious",
    "shocked",
    "amused",
    "embarrassed",
    "curious",
    "disappointed",
    "guilty",
    "serene",
]
_NOUNS = [
    "happiness",
    "sadness",
    "anger",
    "surprise",
    "fear",
    "disgust",
    "worry",
    "joy",
    "contempt",
    "relief",
    "anxiety",
    "excitement",
    "frustration",
    "pride",
    "shame",
    "confusion",
    "boredom",
    "hope",
    "sorrow",
]
_FACE = [
    "raises the inner brows",
    "lowers the brows",
    "raises the cheeks",
    "pulls the lip corners up",
    "presses the lips together",
    "drops the jaw",
    "wrinkles the nose",
    "opens the eyes wide",
    "tightens the eyelids",
    "frowns",
    "smiles",
    "squints",
    "blinks twice",
    "bites the lower lip",
    "stretches the lips",
    "dimples the cheeks",
    "raises the upper lip",
    "looks down",
    "looks away",
    "narrows the eyes",
    "shakes the head",
    "nods slowly",
    "tilts the head",
    "clenches the jaw",
]
_VOICE = [
    "a trembling voice",
    "a loud voice",
    "a soft voice",
    "a flat tone",
    "a rising pitch",
    "a shaky tone",
    "a fast pace",
    "a slow pace",
    "a high pitch",
    "a low pitch",
    "long pauses",
    "a cheerful tone",
    "a sharp tone",
    "a quiet whisper",
    "a warm voice",
    "a cold tone",
    "a steady rhythm",
    "a broken voice",
    "a sigh",
    "nervous laughter",
    "a deep breath",
    "a harsh tone",
    "a gentle tone",
    "a monotone voice",
]
_CONTEXT = [
    "after the meeting",
    "at the party",
    "in the kitchen",
    "on the phone",
    "during the interview",
    "before the exam",
    "after hearing the news",
    "at the station",
    "in the office",
    "at home",
    "on stage",
    "in the hospital",
    "at school",
    "in the street",
    "during dinner",
    "at the airport",
    "in the car",
    "in front of the camera",
    "at the wedding",
    "after the game",
    "in the morning",
    "late at night",
    "on Monday",
    "on Friday",
    "in July",
    "in December",
    "this week",
    "last year",
]
_QUOTES = [
    "I can't believe it!",
    "Leave me alone.",
    "That's wonderful news!",
    "Why would you do that?",
    "Oh no, not again...",
    "We won, we actually won!",
    "Please, just listen to me.",
    "I'm fine, really.",
    "Don't touch that!",
    "Thank you so much.",
    "What happened here?",
    "It's over; let's go home.",
    "Are you serious?",
    "I told you so.",
    "That's not fair!",
    "Well, well, well.",
    "I miss her.",
]
_CUES = ["visual", "acoustic", "lexical", "facial", "vocal", "textual", "temporal", "multimodal"]
_MODALITIES = ["video", "audio", "face", "image", "text", "subtitle", "clip", "frame"]

_TEMPLATES = [
    "{Subj} looks {emo} {ctx}.",
    "In frame {n}, {subj} {face}, which suggests {noun}.",
    "{Subj} speaks with {voice}; the tone sounds {emo}.",
    "Why does {subj} seem so {emo}? Because {subj2} {face} and speaks with {voice}!",
    'AU{au:02d} intensity is {x:.2f} at frame {n} (the peak), so the label is "{emo}".',
    "Q: What emotion is shown in clip {n}? A: {Emo}, with {p}% confidence.",
    '"{quote}" {subj} said, sounding {emo}.',
    "{Subj} {face}, {face2}, and then speaks with {voice} {ctx}.",
    "The {cue} cues ({modality} and {modality2}) point to {noun}, not {noun2}.",
    "Clip #{n}: {Subj} is {emo}: {subj2} {face}; score = {x:.3f}.",
    "At {h}:{mm} {ampm}, {subj} felt {emo} and {emo2}.",
    "The {modality} shows {subj} who {face}; the {modality2} has {voice}.",
    "Label: {Emo} / Confidence: 0.{p:02d} / Frames: {n}-{n2}.",
    "{Subj} was {emo} because the {modality} was {n2} seconds long - too long!",
    "Overall, the {cue} evidence [{x:.1f}] suggests that {subj} feels {noun}.",
    "Please describe the emotion of {subj} in the {modality}; explain the {cue} clues.",
    "{Subj} {face}. {Subj2} {face2}. Both look {emo}.",
    "It's {emo}, isn't it? I'd say {subj} is {emo2}, {subj2} is {emo}.",
]


class _Draw:
    """Deterministic draws built only on ``Random.random()``."""

    def __init__(self, seed: int):
        self._rng = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:  # inclusive bounds
        return lo + int(self._rng.random() * (hi - lo + 1))

    def pick(self, items: list[str]) -> str:
        return items[int(self._rng.random() * len(items))]

    def float(self) -> float:
        return self._rng.random()


def _sentence(draw: _Draw) -> str:
    template = draw.pick(_TEMPLATES)
    subj, subj2 = draw.pick(_SUBJECTS), draw.pick(_SUBJECTS)
    emo = draw.pick(_EMOTIONS)
    values = {
        "subj": subj,
        "Subj": subj[:1].upper() + subj[1:],
        "subj2": subj2,
        "Subj2": subj2[:1].upper() + subj2[1:],
        "emo": emo,
        "Emo": emo.capitalize(),
        "emo2": draw.pick(_EMOTIONS),
        "noun": draw.pick(_NOUNS),
        "noun2": draw.pick(_NOUNS),
        "face": draw.pick(_FACE),
        "face2": draw.pick(_FACE),
        "voice": draw.pick(_VOICE),
        "ctx": draw.pick(_CONTEXT),
        "quote": draw.pick(_QUOTES),
        "cue": draw.pick(_CUES),
        "modality": draw.pick(_MODALITIES),
        "modality2": draw.pick(_MODALITIES),
        "n": draw.int(0, 999),
        "n2": draw.int(1, 99),
        "au": draw.int(1, 45),
        "p": draw.int(10, 99),
        "x": draw.float() * 5,
        "h": draw.int(1, 12),
        "mm": f"{draw.int(0, 59):02d}",
        "ampm": draw.pick(["am", "pm"]),
    }
    return template.format(**values)


def corpus(n_sentences: int = 3000, seed: int = 20240601) -> list[str]:
    """The training corpus: ``n_sentences`` lines, identical on every call with the same arguments."""
    draw = _Draw(seed)
    lines = [_sentence(draw) for _ in range(n_sentences)]
    # Every printable ASCII character appears a few times, so none of them needs byte fallback.
    printable = string.ascii_letters + string.digits + string.punctuation
    lines.extend(f"{printable} {printable[::-1]}" for _ in range(3))
    return lines


def sample_text() -> str:
    """An ordinary English sentence (not in the corpus verbatim) for round-trip checks."""
    return "Honestly, the woman in clip 42 smiles at 3:15 pm; her voice sounds calm (not angry), doesn't it?"
