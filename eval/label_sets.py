"""Label sets now live in :mod:`emollm.dataset.label_sets` (the dataset core, with their YAML files);
this name is kept for scripts that import it from here. In-repo code imports the core."""

from emollm.dataset.label_sets import (  # noqa: F401 - re-exported
    DATA_DIR,
    FILE_FORMAT,
    NOT_SETS,
    SYNONYM_FILES,
    LabelSet,
    available,
    finer_synonyms,
    identity,
    is_path,
    load_label_set,
    resolve,
    synonyms,
)
