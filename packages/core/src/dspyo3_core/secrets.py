"""Secrets: what may be shown of one, and the one place that masks every known secret in text and data.

Known secrets are the values of environment variables named like a credential (``*_API_KEY``, ``*_TOKEN``,
``*_SECRET``, ``*_PASSWORD``, ``*_CREDENTIALS``) and every value given to :func:`register_secret`: the keys of
your LM profiles (registered when the settings are loaded), the key and secret headers of every LM core builds
(``dspy.LM`` / ``HookedLM`` / ``NativeLM``), and whatever a plugin registers. Values shorter than 8 characters
are never treated as secrets (they would mask ordinary words).

* :func:`mask_secret` is what may be shown of one secret: ``****`` plus its last four characters.
* :func:`redact` masks every known secret in a text, also in its JSON-escaped form;
  :func:`masked` masks secret-named entries (``api_key``, ``Authorization``, ``*_token``) in data.
* :func:`install_redaction` makes every log record of the process (ours, DSPy's, LiteLLM's: message, arguments
  and traceback) pass through :func:`redact`, and, for the CLI, every line written to stdout and stderr.

This module sits at the bottom of core: it imports nothing of dspyo3 and nothing of DSPy.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

__all__ = ["MIN_SECRET", "Redactor", "install_redaction", "known_secrets", "mask_secret", "masked", "redact",
           "redact_record", "register_secret", "registered_version", "secret_values", "secrets_version"]

MIN_SECRET = 8
"""Values shorter than this are never masked in text: they would mask ordinary words."""
SECRET_ENV = re.compile(r"(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.I)
"""Names of environment variables whose values are secrets."""
SECRET_NAME = re.compile(
    r"^(api[_-]?key|authorization|proxy-authorization|password|secret|token|access[_-]?token)$"
    r"|[_-](key|token|secret|password)$",
    re.I,
)
"""Names of fields, arguments and headers whose values are secrets (``max_tokens`` is not one)."""
SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|signature|password", re.I)
"""Names of HTTP headers whose values are secrets."""

_registered: set[str] = set()
_lock = threading.Lock()
registered_version = 0
"""Goes up by one whenever :func:`register_secret` (or an LM's keys) adds a secret: a module attribute, so a hot
path can compare it without a call (:func:`secrets_version` also notices environment variables added)."""


def mask_secret(secret: str | None) -> str:
    """What may be shown of a secret: ``****`` plus its last four characters when it is long enough."""
    if not secret:
        return "(none)"
    return "****" + secret[-4:] if len(secret) >= 12 else "****"


def masked(value: Any, name: str = "") -> Any:
    """``value`` with every secret-named entry (``api_key``, ``Authorization``, ``*_token``, ...) masked, through
    nested dicts and lists; ``max_tokens`` and other non-secret names are left alone."""
    if name and SECRET_NAME.search(name) and isinstance(value, (str, bytes)):
        return mask_secret(value.decode(errors="replace") if isinstance(value, bytes) else value)
    if isinstance(value, dict):
        return {k: masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(masked(v) for v in value)
    return value


def register_secret(*values: str | bytes | None) -> None:
    """Make ``values`` known secrets of this process: from now on :func:`redact` (and so every log line and, in
    the CLI, every printed line) masks them. ``None``, empty and short values are ignored. A bearer value
    (``"Bearer sk-..."``) registers the token too."""
    global registered_version
    found = set()
    for value in values:
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if not isinstance(value, str):
            continue
        value = value.strip()
        for candidate in (value, value.partition(" ")[2].strip() if " " in value else ""):
            if len(candidate) >= MIN_SECRET:
                found.add(candidate)
    with _lock:
        if found - _registered:
            _registered.update(found)
            registered_version += 1


def secrets_version() -> tuple[int, int]:
    """What changes when the known secrets may have: a secret was registered, or environment variables were
    added or removed (a ``.env`` file loaded late). Cheap enough to compare on every logged event; a variable whose
    value changes in place is not noticed (register it, or configure logging again)."""
    return (registered_version, len(os.environ))


def secret_values(kwargs: Mapping[str, Any]) -> list[str]:
    """The secret values among LM keyword arguments: secret-named entries (``api_key``, ``*_token``, ...) and
    secret headers in ``headers`` / ``extra_headers`` (``Authorization``, ``x-api-key``, ``api-key``, cookies)."""
    found = [v for k, v in kwargs.items() if SECRET_NAME.search(str(k)) and isinstance(v, str)]
    for name in ("headers", "extra_headers"):
        headers = kwargs.get(name)
        pairs = headers.items() if isinstance(headers, Mapping) else headers if isinstance(headers, list) else ()
        for pair in pairs:
            if isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[1], str) and (
                    SECRET_HEADER.search(str(pair[0]))):
                found.append(pair[1])
    return found


def _env_secrets() -> set[str]:
    return {v.strip() for k, v in os.environ.items() if SECRET_ENV.search(k) and v and len(v.strip()) >= MIN_SECRET}


def known_secrets() -> list[str]:
    """Every secret value this process knows (the environment's and the registered ones), longest first."""
    with _lock:
        values = set(_registered)
    return sorted(values | _env_secrets(), key=len, reverse=True)


class Redactor:
    """Replaces secret values in text, and masks secret-named fields in data.

    Args:
        secrets: secret values to hide, besides the known ones.
        from_env: also hide the values of credential-named environment variables.
        registered: also hide every value given to :func:`register_secret` (as of construction).
        safe_fields: field names :meth:`data` never inspects (names of fields the caller makes itself).
    """

    def __init__(self, secrets: Iterable[str] = (), from_env: bool = True, *, registered: bool = True,
                 safe_fields: Iterable[str] = ()) -> None:
        values = {s for s in secrets if s and len(s) >= MIN_SECRET}
        if from_env:
            values |= _env_secrets()
        if registered:
            with _lock:
                values |= _registered
        self.version = secrets_version()
        # as they appear inside a JSON line too (quotes, backslashes, control and non-ASCII characters escaped)
        values |= {json.dumps(v)[1:-1] for v in values} | {json.dumps(v, ensure_ascii=False)[1:-1] for v in values}
        self._values = sorted(values, key=len, reverse=True)  # longest first: a key containing another
        self._pattern = re.compile("|".join(re.escape(v) for v in self._values)) if self._values else None
        self._safe = frozenset(safe_fields)
        self._secret_names: dict[str, bool] = {}  # field name -> is it secret-looking (names repeat on every event)

    @property
    def values(self) -> list[str]:
        """The secret values hidden (longest first)."""
        return list(self._values)

    def text(self, text: str) -> str:
        """``text`` with every secret value masked."""
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(lambda m: mask_secret(m.group(0)), text)

    def data(self, value: dict[str, Any]) -> dict[str, Any]:
        """``value`` with secret-named fields masked (through nested dicts and lists); ``value`` itself when
        nothing needed masking."""
        out = value
        for name, item in value.items():
            if name in self._safe:
                continue
            secret = self._secret_names.get(name)
            if secret is None:
                secret = bool(SECRET_NAME.search(name))
                if len(self._secret_names) < 4096:
                    self._secret_names[name] = secret
            if secret or isinstance(item, (dict, list, tuple)):
                cleaned = masked(item, name)
                if cleaned is not item:
                    if out is value:
                        out = dict(value)
                    out[name] = cleaned
        return out


_current: tuple[tuple[int, frozenset[str]], Redactor] | None = None


def _process_redactor() -> Redactor:
    global _current
    key = (registered_version, frozenset(_env_secrets()))
    current = _current
    if current is None or current[0] != key:
        current = _current = (key, Redactor())
    return current[1]


def redact(text: str, *extra: str | None) -> str:
    """``text`` with every known secret (and the ``extra`` values) masked: for any message about to be shown or
    logged, including the text of exceptions raised by DSPy, LiteLLM or a provider (some echo the key they got)."""
    text = _process_redactor().text(text)
    for value in extra:
        if value and len(value) >= MIN_SECRET and value in text:
            text = text.replace(value, mask_secret(value))
    return text


# -- process-wide installation ----------------------------------------------------------------------------------

_installed_factory = False


def redact_record(record: logging.LogRecord, mask: Callable[[str], str] = redact) -> None:
    """Mask secrets (with ``mask``, default :func:`redact`) in a log record's message, arguments, traceback and
    stack, in place."""
    try:
        message = record.getMessage()
    except Exception:  # a bad %-format is logging's to report (handleError), not ours
        return
    cleaned = mask(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:
        record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = mask(record.exc_text)
    if record.stack_info:
        record.stack_info = mask(record.stack_info)


class RedactingStream(io.TextIOBase):
    """A text stream that masks every known secret in what is written to it, then writes to ``stream``.

    Text is passed on a line at a time (a partial line waits for its end, or for :meth:`flush`), so a secret
    written in two pieces is still caught."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__()
        self.stream = stream
        self._pending = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            data = self._pending + text
            head, newline, tail = data.rpartition("\n")
            self._pending = tail
            if newline:
                self.stream.write(redact(head + newline))
            if len(self._pending) > 65536:  # no newline for a long time: pass it on rather than hold it
                self.stream.write(redact(self._pending))
                self._pending = ""
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self.stream.write(redact(self._pending))
                self._pending = ""
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.stream, "errors", None)

    @property
    def buffer(self) -> Any:
        """The underlying binary buffer, masking too (click writes bytes there when the terminal's encoding cannot
        encode the text): what is written is flushed text first, then the bytes with every known secret masked."""
        return _RedactingBuffer(self, self.stream.buffer)  # type: ignore[attr-defined]

    def writable(self) -> bool:
        return True


class _RedactingBuffer:
    """The binary side of a :class:`RedactingStream`: each write is decoded (undecodable bytes kept as they are),
    masked and encoded back."""

    def __init__(self, text: RedactingStream, raw: Any) -> None:
        self._text = text
        self._raw = raw

    def write(self, data: bytes) -> int:
        self._text.flush()  # text written before these bytes goes out first
        decoded = bytes(data).decode("utf-8", "surrogateescape")
        cleaned = redact(decoded)
        self._raw.write(data if cleaned == decoded else cleaned.encode("utf-8", "surrogateescape"))
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def install_redaction(*, streams: bool = False) -> None:
    """Mask every known secret in every log record of this process (message, arguments, traceback), whichever
    logger or handler it goes to; with ``streams``, also in everything written to ``sys.stdout`` and
    ``sys.stderr`` (the CLI does this, so no command, plugin or library can print a key). Idempotent."""
    global _installed_factory
    if not _installed_factory:
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed_factory = True
    if streams:
        if not isinstance(sys.stdout, RedactingStream) and sys.stdout is not None:
            sys.stdout = RedactingStream(sys.stdout)
        if not isinstance(sys.stderr, RedactingStream) and sys.stderr is not None:
            sys.stderr = RedactingStream(sys.stderr)
