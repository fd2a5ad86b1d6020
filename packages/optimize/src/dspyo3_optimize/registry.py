"""The versioned registry of compiled DSPy programs (``dspyo3 registry ...``).

The implementation lives in :mod:`dspyo3_optimize.programs` (backends, metadata, the registry itself); this module
re-exports its public names, so ``from dspyo3_optimize.registry import ProgramRegistry`` keeps working.
"""

from __future__ import annotations

from dspyo3_optimize.common import sha256_hex, state_checksum
from dspyo3_optimize.programs.backends import Backend, FsspecBackend, LocalBackend, RedisBackend, open_backend
from dspyo3_optimize.programs.errors import IntegrityError, NotFoundError, RegistryError
from dspyo3_optimize.programs.metadata import (
    SIGNING_KEY_ENV,
    STAGES,
    Bump,
    ProgramVersion,
    Score,
    next_version,
    parse_version,
)
from dspyo3_optimize.programs.registry import (
    BUILTIN_TRUSTED_FACTORIES,
    ProgramRegistry,
    open_registry,
    trusted_factories_from_settings,
)

__all__ = [
    "BUILTIN_TRUSTED_FACTORIES",
    "SIGNING_KEY_ENV",
    "STAGES",
    "Backend",
    "Bump",
    "FsspecBackend",
    "IntegrityError",
    "LocalBackend",
    "NotFoundError",
    "ProgramRegistry",
    "ProgramVersion",
    "RedisBackend",
    "RegistryError",
    "Score",
    "next_version",
    "open_backend",
    "open_registry",
    "parse_version",
    "sha256_hex",
    "state_checksum",
    "trusted_factories_from_settings",
]
