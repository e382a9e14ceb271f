"""The package version, in one place (setuptools reads it; nothing else needs the package root)."""

__version__ = "0.1.0"
