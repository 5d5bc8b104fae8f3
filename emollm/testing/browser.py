"""A headless Chromium for the web pages' tests (Debian's ``chromium`` + ``chromium-driver``, driven by
Selenium with the system driver: nothing is downloaded). :func:`chromium` is None, with the reason,
where no browser is installed, so a test can skip saying why."""

from __future__ import annotations

import shutil
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver", "chromium-driver")


def missing() -> str | None:
    """Why no browser test can run here (None: they can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'emollm[web-test]')"
    if not any(shutil.which(b) for b in BROWSERS):
        return "no Chromium (apt-get install chromium chromium-driver)"
    if not any(shutil.which(d) for d in DRIVERS):
        return "no chromedriver (apt-get install chromium-driver)"
    return None


def chromium(width: int = 1280, height: int = 900) -> Any:
    """A headless Chromium WebDriver (the caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.binary_location = next(shutil.which(b) for b in BROWSERS if shutil.which(b))
    driver = next(shutil.which(d) for d in DRIVERS if shutil.which(d))
    return webdriver.Chrome(service=Service(driver), options=options)
