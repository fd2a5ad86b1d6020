"""Small helpers shared by the runner and the registry (no heavy imports: the CLI imports this at start-up)."""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping
from typing import Any


def now() -> str:
    """The current UTC time as ISO-8601 text, to the second (``2026-12-04T18:03:47+00:00``)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def canonical(data: Any) -> bytes:
    """``data`` as canonical JSON bytes (sorted keys, indented, UTF-8; non-JSON values as ``str``): what the
    registry stores and every checksum is taken of."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str).encode()


def state_checksum(program: Any) -> str:
    """``sha256:<hex>`` of a program's state as the registry stores it (``program``: a module or its state; its
    learned state only, see :func:`dspyo3_core.program_state.learned_state`)."""
    from dspyo3_core.program_state import learned_state

    return "sha256:" + sha256_hex(canonical(learned_state(program if isinstance(program, Mapping)
                                                          else program.dump_state())))


def reason_line(text: str, limit: int = 300) -> str:
    """The first non-blank line of an error's text, whitespace collapsed, cut to ``limit`` characters and with
    every known secret masked (:func:`dspyo3_core.secrets.redact`): what a one-line message may show of it."""
    from dspyo3_core.secrets import redact

    line = next((" ".join(part.split()) for part in redact(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def error_fix(reason: str, profile: str | None = None) -> str:
    """What to do about a failure whose (first-line) reason is ``reason``: fix the metric when the metric raised,
    else check the LM (``dspyo3 lm test [PROFILE]``)."""
    if reason.startswith("metric failed:"):
        return "fix the metric: it raised on the program's answers"
    test = "dspyo3 lm test" + (f" {profile}" if profile else "")
    if any(word in reason for word in ("AuthError", "AuthenticationError", "API key", "api key", "401")):
        return f"check the LM profile's key and endpoint with `{test}`"
    return f"check that the LM answers with `{test}`"


def jsonable(value: Any) -> Any:
    """``value`` round-tripped through JSON: objects that are not JSON become their ``model`` attribute (an LM) or
    their type's name, so a record of options can be written and compared across processes."""
    return json.loads(json.dumps(value, default=lambda o: getattr(o, "model", None) or type(o).__name__))
