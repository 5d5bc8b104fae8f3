"""The clip record schema now lives in :mod:`emollm.dataset.record` (the dataset core); this name is
kept for scripts that import it from here. In-repo code imports the core."""

from emollm.dataset.record import (  # noqa: F401 - re-exported
    RECORD_VERSION,
    REQUIRED,
    REVIEW_STATES,
    SUPPORTED_VERSIONS,
    check_record,
    read_annotations,
    read_build_errors,
    read_dataset,
)
