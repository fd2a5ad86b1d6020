"""What the program registry records about each version, and how it is checked.

* names and versions: program names, semver versions (:func:`parse_version`, :func:`next_version`), the stages;
* :class:`ProgramVersion` / :class:`Score`: the metadata record ``meta.json`` holds;
* integrity: the sha256 of the metadata itself (:func:`metadata_checksum`) and, with a signing key
  (``$DSPYO3_REGISTRY_KEY``), its HMAC-SHA256 signature (:func:`metadata_signature`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from dspyo3_optimize.common import canonical, sha256_hex
from dspyo3_optimize.programs.errors import RegistryError

STAGES: tuple[str, ...] = ("dev", "staging", "prod")
"""The stages a version can be promoted through, lowest first."""
Bump = Literal["major", "minor", "patch"]
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""What a program name may look like (it is a directory or key component in every backend)."""
VERSION_PATTERN = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
"""A semver ``MAJOR.MINOR.PATCH`` version without leading zeros."""


def check_name(name: str) -> str:
    """``name`` if it is a valid program name; a :class:`RegistryError` saying what is allowed otherwise."""
    if not NAME_PATTERN.match(name):
        raise RegistryError(f"invalid program name {name!r}: use letters, digits, '.', '_' or '-' (max 128, no "
                            "leading punctuation)")
    return name


def parse_version(version: str) -> tuple[int, int, int]:
    """``"1.2.3"`` -> ``(1, 2, 3)``; a clear error otherwise."""
    match = VERSION_PATTERN.match(version)
    if match is None:
        raise RegistryError(f"invalid version {version!r}: versions are semver MAJOR.MINOR.PATCH without leading "
                            "zeros, e.g. 1.0.0")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch)


def next_version(existing: Sequence[str], bump: Bump = "patch") -> str:
    """The version after the highest of ``existing`` (``1.0.0`` for the first one)."""
    if not existing:
        return "1.0.0"
    major, minor, patch = max(parse_version(v) for v in existing)
    if bump == "major":
        return f"{major + 1}.0.0"
    if bump == "minor":
        return f"{major}.{minor + 1}.0"
    if bump == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise RegistryError(f"unknown bump {bump!r}; use major, minor or patch")


@dataclass
class Score:
    """A score with its confidence interval: ``value`` in ``[ci_low, ci_high]`` on ``n`` examples."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    dataset: str | None = None


@dataclass
class ProgramVersion:
    """Metadata of one registered version (what ``meta.json`` holds).

    Attributes:
        name, version: the program and its semver version.
        checksum: ``sha256:<hex>`` of the stored DSPy JSON state.
        parent: the version it was derived from (optimized from, or registered after), if any.
        program: import path of a factory that builds an empty program of the right structure (used by
            :meth:`ProgramRegistry.load` when no program object is passed).
        dataset_hash: :func:`dspyo3_optimize.data.dataset_hash` of the training data.
        metric: the metric's import path or name.
        scores: named :class:`Score` entries (``"dev"``, ``"test"``...).
        dspy_version: DSPy version that produced the state.
        lm_profile: the LM profile (or model) it was optimized with.
        optimizer: the optimizer and its options.
        run_id: the optimizer run that produced it.
        created_at: ISO-8601 UTC time of registration.
        notes: free text.
        extra: anything else JSON-serialisable.
    """

    name: str
    version: str
    checksum: str
    parent: str | None = None
    program: str | None = None
    dataset_hash: str | None = None
    metric: str | None = None
    scores: dict[str, Score] = field(default_factory=dict)
    dspy_version: str | None = None
    lm_profile: str | None = None
    optimizer: dict[str, Any] | None = None
    run_id: str | None = None
    created_at: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProgramVersion:
        """Inverse of :meth:`to_dict` (unknown keys are kept in ``extra``)."""
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["scores"] = {k: Score(**v) if isinstance(v, Mapping) else Score(float(v))
                            for k, v in (data.get("scores") or {}).items()}
        extra = dict(values.get("extra") or {})
        extra.update({k: v for k, v in data.items() if k not in known})
        values["extra"] = extra
        return cls(**values)


SIGNING_KEY_ENV = "DSPYO3_REGISTRY_KEY"
"""The environment variable holding the registry's signing key (HMAC-SHA256), when versions are signed."""


def load_signing_key(key: str | bytes | None) -> bytes | None:
    """The signing key as bytes: ``key``, else ``$DSPYO3_REGISTRY_KEY``, else None (versions unsigned). A text key
    is registered as a secret (masked in logs); a key shorter than 16 bytes is refused."""
    if key is None:
        key = os.environ.get(SIGNING_KEY_ENV) or None
    if key is None:
        return None
    if isinstance(key, str):
        from dspyo3_core.secrets import register_secret

        register_secret(key)
        key = key.encode()
    if len(key) < 16:
        raise RegistryError(f"the registry signing key ({SIGNING_KEY_ENV} or signing_key=) is {len(key)} bytes; use "
                            "at least 16 random bytes, e.g. python -c 'import secrets; print(secrets.token_hex(32))'")
    return key


def metadata_signature(key: bytes, fields: Mapping[str, Any]) -> str:
    """HMAC-SHA256 of the metadata fields (everything but ``meta_checksum`` and ``signature``): the metadata holds
    the state's sha256, so this signs the program too."""
    import hmac

    body = canonical({k: v for k, v in fields.items() if k not in ("meta_checksum", "signature")})
    return "hmac-sha256:" + hmac.new(key, body, "sha256").hexdigest()


def metadata_checksum(fields: Mapping[str, Any]) -> str:
    """sha256 of the metadata fields (everything but ``meta_checksum`` itself), in canonical JSON."""
    return "sha256:" + sha256_hex(canonical({k: v for k, v in fields.items() if k != "meta_checksum"}))
