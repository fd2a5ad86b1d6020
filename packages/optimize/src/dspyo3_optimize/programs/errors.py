"""Errors of the program registry: each message names the program, version or file and the fix."""

from __future__ import annotations


class RegistryError(RuntimeError):
    """A registry operation failed; the message names the program, version or file and the fix."""


class IntegrityError(RegistryError):
    """A stored artifact does not match its recorded checksum (or cannot be read): it was changed or corrupted."""


class NotFoundError(RegistryError, KeyError):
    """No such program, version or stage."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
