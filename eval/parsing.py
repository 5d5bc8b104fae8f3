"""Label parsing now lives in :mod:`emollm.dataset.label_parsing` (the dataset core, beside the label
sets: the builder's reasoning filter and the evaluator share it); this name is kept for scripts that
import it from here. In-repo code imports the core."""

from emollm.dataset.label_parsing import (  # noqa: F401 - re-exported
    BREAKS_EN,
    BREAKS_ZH,
    CJK,
    DEFAULT_STRATEGY,
    LANGUAGES,
    MARKERS_EN,
    MARKERS_ZH,
    NEGATIONS_EN,
    NEGATIONS_ZH,
    NEUTRAL_ZH,
    STRATEGIES,
    WORD_PATTERN,
    Mention,
    ParsedLabel,
    check_fallback,
    detect_language,
    dominant_language,
    excerpt,
    find_label,
    language_counts,
    mentions,
    normalize_given_label,
    parse_label,
    reasoning_label,
    tokens,
)
