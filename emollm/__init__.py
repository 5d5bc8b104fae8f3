"""emollm: multimodal emotion LLMs in the Emotion-LLaMA style.

Build MERR-style instruction datasets from raw clips, train encoders projected into a swappable
LLM, evaluate on DFEW / MER2023 / MELD-style sets, and explain a clip.
"""

__version__ = "0.1.0"
