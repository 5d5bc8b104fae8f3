"""Shared by the web pages' tests: a headless Chromium (skipped, with the reason, where none is
installed) and the folder the screenshots are saved to as test artefacts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emollm.testing import browser


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Screenshots of the browser tests: ``$EMOLLM_TEST_ARTIFACTS`` or ``<repo>/test-artifacts/web``."""
    root = Path(os.environ.get("EMOLLM_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / "test-artifacts")
    out = root / "web"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def chromium():
    why = browser.missing()
    if why:
        pytest.skip(f"no browser test here: {why}")
    driver = browser.chromium()
    try:
        yield driver
    finally:
        driver.quit()
