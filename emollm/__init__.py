"""emollm: multimodal emotion LLMs in the Emotion-LLaMA style.

Build MERR-style instruction datasets from raw clips, train encoders projected into a swappable
LLM, evaluate on DFEW / MER2023 / MELD-style sets, and explain a clip.
"""

from emollm.version import __version__

__all__ = ["__version__", "load", "load_dataset"]


def load(run_dir, **kwargs):  # noqa: ANN001, ANN003, ANN201 - kept import-light: torch loads on first use
    """A trained run, ready to explain clips: ``emollm.load(RUN_DIR).explain("clip.mp4")`` -> label,
    reasoning and the cues used (:class:`emollm.inference.Explainer`)."""
    from emollm.inference import Explainer

    return Explainer.load(run_dir, **kwargs)


def load_dataset(dataset_dir, **kwargs):  # noqa: ANN001, ANN003, ANN201 - kept import-light: datasets loads on first use
    """A built dataset (or an ``emollm export --to hf`` folder) as a ``datasets.DatasetDict`` per split:
    ``emollm.load_dataset(DIR)`` -> records, ``load_dataset(DIR, instructions="emotion")`` -> instruction
    samples (:func:`emollm.dataset.hf.load_dataset`)."""
    from emollm.dataset.hf import load_dataset as _load_dataset

    return _load_dataset(dataset_dir, **kwargs)
