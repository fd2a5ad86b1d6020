"""Errors shared by several layers of dspyo3-core (imported by the LM layer and the app layer alike)."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration file or variable is wrong; the message names the file or variable and the fix."""
