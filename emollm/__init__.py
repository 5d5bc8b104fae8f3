"""emollm: multimodal emotion LLMs in the Emotion-LLaMA style.

Build MERR-style instruction datasets from raw clips, train encoders projected into a swappable
LLM, evaluate on DFEW / MER2023 / MELD-style sets, and explain a clip.
"""

__version__ = "0.1.0"


def load(run_dir, **kwargs):  # noqa: ANN001, ANN003, ANN201 - kept import-light: torch loads on first use
    """A trained run, ready to explain clips: ``emollm.load(RUN_DIR).explain("clip.mp4")`` -> label,
    reasoning and the cues used (:class:`emollm.inference.Explainer`)."""
    from emollm.inference import Explainer

    return Explainer.load(run_dir, **kwargs)
