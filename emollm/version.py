"""The package version, in a module of its own: modules that record it (run configs, feature cache
entries, build manifests) import this leaf, not ``emollm/__init__.py`` and its lazy public API."""

__version__ = "0.1.0"
