"""Structured JSON logs with trace ids, and secret redaction for every log line.

One JSON object per line: ``{"ts": ..., "level": ..., "logger": ..., "event": "lm_call", "trace_id": ..., ...}``.
The production stack emits one ``lm_call`` event per LM call and one ``module_call`` event per DSPy module call
(logger ``dspyo3.events``); a trace id is opened by the outermost module call (or by :func:`trace`) and carried
by every event under it, across threads DSPy starts with copied contexts and into async calls. With tracing on
(:mod:`dspyo3_core.spans`), a line written inside a span carries that span's ``trace_id`` and ``span_id``, so logs
and spans share one id.

Redaction: secret-named fields (``api_key``, ``authorization``, ``*_token``, ...) are masked wherever they sit in
an event, and the *values* of known secrets (every ``*_API_KEY`` / ``*_TOKEN`` / ``*_SECRET`` / ``*_PASSWORD``
environment variable, the keys in your LM profiles, and anything passed as ``secrets=``) are replaced in the
final line, whoever logged it. :func:`configure_logging` also puts a :class:`RedactingFilter` on the root
logger's handlers, so LiteLLM's or your own log lines are cleaned too.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import os
import sys
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import orjson

from dspyo3_core import secrets as _secrets
from dspyo3_core import spans as _spans
from dspyo3_core.secrets import Redactor as _CoreRedactor

EVENTS = logging.getLogger("dspyo3.events")
"""The logger the production stack writes its events to."""
_DSPYO3 = logging.getLogger("dspyo3")
_EVENTS_NAME = EVENTS.name

_TRACE: contextvars.ContextVar[str | None] = contextvars.ContextVar("dspyo3_trace_id", default=None)
_NO_FIELDS: dict[str, Any] = {}
_FIELDS: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("dspyo3_log_fields", default=_NO_FIELDS)
_SAFE_FIELDS = frozenset({"ts", "level", "logger", "event", "trace_id", "span_id", "model", "status", "duration_ms",
                          "prompt_tokens", "completion_tokens", "cost_usd", "cache", "module", "tool"})
# the fields of the production stack's own lm_call events: names that are not secret-looking, values it makes
# itself as plain scalars (so such an event needs no per-field masking; values are still masked in the line)
_LM_CALL_FIELDS = _SAFE_FIELDS | {"error", "fallback_from", "experiment", "arm", "run", "user"}
_LEVELS = {logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARNING", logging.ERROR: "ERROR"}


def trace_id() -> str | None:
    """The trace id of the current context, if one is open."""
    return _TRACE.get()


def new_trace_id() -> str:
    """A fresh 32-hex-digit trace id (W3C trace-context sized)."""
    return uuid.uuid4().hex


@contextmanager
def trace(trace_id: str | None = None, **fields: Any) -> Iterator[str]:
    """Open a trace (and extra fields every event under it carries, e.g. ``request_id=``); yields the trace id.
    Nested calls keep the outer trace id unless one is given."""
    tid = trace_id or _TRACE.get() or new_trace_id()
    token = _TRACE.set(tid)
    fields_token = _FIELDS.set({**_FIELDS.get(), **fields}) if fields else None
    try:
        yield tid
    finally:
        if fields_token is not None:
            _FIELDS.reset(fields_token)
        _TRACE.reset(token)


def open_trace() -> contextvars.Token[str | None] | None:
    """Start a trace if none is open (with the current span's trace id when tracing is on); the token to
    :func:`close_trace` with (None if one was already open)."""
    if _TRACE.get() is None:
        ref = _spans.CURRENT.get() if _spans.TRACER is not None else None
        return _TRACE.set(f"{ref.trace_id:032x}" if ref is not None else new_trace_id())
    return None


def close_trace(token: contextvars.Token[str | None] | None) -> None:
    """End the trace :func:`open_trace` started."""
    if token is not None:
        try:
            _TRACE.reset(token)
        except ValueError:  # ended in another context (an async callback): leave that context's trace alone
            pass


class Redactor(_CoreRedactor):
    """:class:`dspyo3_core.secrets.Redactor` for log events: replaces known secret values in text (every secret
    registered in this process, e.g. your LM profiles' keys, and ``*_API_KEY``/``*_TOKEN``/``*_SECRET``/
    ``*_PASSWORD`` variables), and masks secret-named fields in data, skipping the fields events are made of.

    Args:
        secrets: more secret values to hide.
        from_env: also hide the values of credential-named environment variables.
    """

    def __init__(self, secrets: Iterable[str] = (), from_env: bool = True) -> None:
        super().__init__(secrets, from_env, safe_fields=_SAFE_FIELDS)


def _profile_secrets() -> list[str]:
    """The keys of every LM profile (loading the settings registers them with :mod:`dspyo3_core.secrets`)."""
    try:
        from dspyo3_core.config import load_settings
        from dspyo3_core.registry import LMProviderSpec

        settings = load_settings()
    except Exception:
        return []
    keys = []
    for profile in settings.profiles.values():
        if profile.api_key_in_file:
            keys.append(profile.api_key_in_file)
        key, _ = profile.resolve_key(LMProviderSpec(profile.provider, "", ()))
        if key:
            keys.append(key)
    return keys


def _span_ids() -> tuple[str, str | None] | None:
    """``(trace id, span id)`` of the current span when tracing is on (one global read when it is off); the span
    id is None under a remote parent alone (that span belongs to the caller, not to this process's lines)."""
    if _spans.TRACER is None:
        return None
    ids = _spans.current_ids()
    if ids is None:
        return None
    ref = _spans.CURRENT.get()
    return (ids[0], None) if ref is not None and ref.remote else ids


def _event_body(fields: dict[str, Any], trace: str | None = None) -> dict[str, Any]:
    """What follows an event's header: the trace id (``trace``, else the current span's, else the open trace)
    and the span id, the fields of the enclosing :func:`trace` blocks, then ``fields`` (``fields`` itself when
    there is nothing to add)."""
    ids = _span_ids() if trace is None else None
    tid = trace or (ids[0] if ids is not None else _TRACE.get())
    context_fields = _FIELDS.get()
    if not tid and not context_fields:
        return fields
    out: dict[str, Any] = {"trace_id": tid} if tid else {}
    if ids is not None and ids[1] is not None:
        out["span_id"] = ids[1]
    out.update(context_fields)
    out.update(fields)
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, event (the message), trace id, the record's ``fields``
    (``extra={"fields": {...}}``) and the exception, all redacted."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        exception = self.formatException(record.exc_info) if record.exc_info else None
        return self.render(record.created, record.levelname, record.name, record.getMessage(), fields,
                           getattr(record, "trace_id", None), exception)

    def render(self, created: float, level: str, logger: str, message: str, fields: dict[str, Any] | None,
               trace: str | None = None, exception: str | None = None) -> str:
        """One event as a redacted JSON line (no newline)."""
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(created, datetime.timezone.utc).isoformat(timespec="microseconds"),
            "level": level.lower(),
            "logger": logger,
            "event": message,
        }
        out.update(_event_body(fields or {}, trace))
        if exception:
            out["exception"] = exception
        line = orjson.dumps(self.redactor.data(out), default=str).decode()
        return self.redactor.text(line)


class JsonEventHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs: JSON lines, redacted.

    When it is the only consumer of ``dspyo3.events``, :func:`event` hands it events directly (no ``LogRecord``,
    no caller lookup), and when its stream is a real file (stderr, stdout, a log file) those events are rendered
    and written by ``dspyo3_native.EventSink`` on a background thread, so an LM call pays only for handing the
    fields over. Records from ``logging`` (yours, LiteLLM's) still go through :class:`JsonFormatter`.
    """

    def __init__(self, stream: IO[str], redactor: Redactor, native: bool = True) -> None:
        super().__init__(stream)
        self._extra_secrets = [v for v in redactor.values if v]
        self.json = JsonFormatter(redactor)
        self.setFormatter(self.json)
        self.addFilter(RedactingFilter(redactor))
        self.sink: Any = None
        if native:
            try:
                fd = stream.fileno()
                from dspyo3_native import EventSink
            except (AttributeError, OSError, ValueError, ImportError):
                fd = None
            if fd is not None:
                stream.flush()  # what Python buffered goes out before the sink's first line
                self._fd = fd
                self.sink = EventSink(fd, redactor.values)
                _SINK_HANDLERS.add(self)

    def refresh_secrets(self) -> None:
        """Take in the secrets registered since this handler was made (an LM built later with a key of its own):
        a new redactor, and a new event writer that knows them."""
        redactor = Redactor(self._extra_secrets)
        self.json.redactor = redactor
        for f in self.filters:
            if isinstance(f, RedactingFilter):
                f.redactor = redactor
        if self.sink is not None:
            from dspyo3_native import EventSink

            self.sink.flush()
            _ORPHANED_SINKS.append(self.sink)
            self.sink = EventSink(self._fd, redactor.values)

    def _after_fork(self) -> None:
        """In a forked child the writer thread does not exist: start a new one (the parent's sink object is kept
        alive, never dropped, as joining a thread that is not there would hang)."""
        if self.sink is not None:
            from dspyo3_native import EventSink

            _ORPHANED_SINKS.append(self.sink)
            self.sink = EventSink(self._fd, self.json.redactor.values)

    def write_event(self, name: str, level: int, fields: dict[str, Any]) -> None:
        """Write one event line (what ``handle`` would write for it, minus the ``LogRecord``)."""
        if self.json.redactor.version != _secrets.secrets_version():
            self.refresh_secrets()
        sink = self.sink
        if sink is not None:
            if _TRACE.get() is not None or _FIELDS.get() or (_spans.TRACER is not None and _spans.CURRENT.get()):
                fields = _event_body(fields)
            sink.emit(_LEVELS.get(level) or logging.getLevelName(level), _EVENTS_NAME, name,
                      self.json.redactor.data(fields))
            return
        line = self.json.render(time.time(), logging.getLevelName(level), EVENTS.name, name, fields)
        with self.lock:  # type: ignore[union-attr]
            self.stream.write(line + "\n")
            self.flush()

    def flush(self) -> None:
        """Flush the stream, and wait for the event writer to catch up."""
        if self.sink is not None:
            self.sink.flush()
        try:
            super().flush()
        except ValueError:  # the stream was closed by its owner; the sink holds its own descriptor
            pass


class RedactingFilter(logging.Filter):
    """A handler filter that masks known secret values in any record's message and arguments."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()

    def filter(self, record: logging.LogRecord) -> bool:
        _secrets.redact_record(record, self.redactor.text)
        return True


_SINK_HANDLERS: weakref.WeakSet[JsonEventHandler] = weakref.WeakSet()
_ORPHANED_SINKS: list[Any] = []


def _after_fork_in_child() -> None:
    for handler in list(_SINK_HANDLERS):
        handler._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def configure_logging(stream: IO[str] | None = None, *, level: int | str = logging.INFO,
                      secrets: Iterable[str] = (), redact_root: bool = True, native: bool = True) -> logging.Handler:
    """Write dspyo3 events as JSON lines to ``stream`` (default stderr); returns the handler.

    Args:
        secrets: more secret values to hide (API keys from the environment and from LM profiles always are);
            they are registered with :mod:`dspyo3_core.secrets`, whose masking this also installs for every log
            record of the process.
        redact_root: also add a :class:`RedactingFilter` to the root logger's handlers.
        native: let the Rust writer thread render events when ``stream`` is a real file (see
            :class:`JsonEventHandler`); ``False`` keeps everything in Python.
    """
    _secrets.register_secret(*secrets)
    _secrets.install_redaction()  # every log record of the process, whichever handler it reaches
    redactor = Redactor([*secrets, *_profile_secrets()])
    handler = JsonEventHandler(stream if stream is not None else sys.stderr, redactor, native=native)
    for old in [h for h in _DSPYO3.handlers if isinstance(h, JsonEventHandler)]:
        _DSPYO3.removeHandler(old)
        old.flush()
    _DSPYO3.addHandler(handler)
    _DSPYO3.setLevel(level)
    _DSPYO3.propagate = False
    if redact_root:
        for h in logging.getLogger().handlers:
            if not any(isinstance(f, RedactingFilter) for f in h.filters):
                h.addFilter(RedactingFilter(redactor))
    return handler


def redact(text: str, *extra: str | None) -> str:
    """``text`` with the configured secrets, every secret known to :mod:`dspyo3_core.secrets` and the ``extra``
    values masked: for error messages about to be logged or cut short."""
    handler = next((h for h in _DSPYO3.handlers if isinstance(h, JsonEventHandler)), None)
    if handler is not None:
        text = handler.json.redactor.text(text)
    return _secrets.redact(text, *extra)


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event on ``dspyo3.events`` (skipped cheaply when that level is off).

    When :func:`configure_logging`'s handler is the only consumer, the line is written directly; otherwise a
    ``LogRecord`` goes through ``logging`` as usual (to your handlers, filters and formatters).
    """
    if EVENTS.isEnabledFor(level):
        emit(name, level, fields)


def emit(name: str, level: int, fields: dict[str, Any], *, scalars: bool = False) -> None:
    """:func:`event` for a caller that has already checked ``EVENTS.isEnabledFor(level)`` and hands over a
    ``fields`` dict it no longer uses.

    ``scalars=True`` is for the production stack's own ``lm_call`` events, whose values are plain scalars it made
    itself: when the field names are the known ones, the event goes to the Rust writer as one JSON buffer without
    the per-field walk for secret-named keys (secret *values* are still masked in the written line)."""
    handlers = _DSPYO3.handlers  # is our JSON handler the only consumer? (inlined: this runs on every LM call)
    direct = handlers[0] if len(handlers) == 1 else None
    if (type(direct) is JsonEventHandler and level >= direct.level and not EVENTS.handlers
            and not EVENTS.filters and not _DSPYO3.filters and not _DSPYO3.propagate and EVENTS.propagate
            and not EVENTS.disabled):
        if direct.json.redactor.version != _secrets.secrets_version():  # new secrets since: write them masked
            direct.refresh_secrets()
        sink = direct.sink
        if scalars and sink is not None and not _FIELDS.get() and fields.keys() <= _LM_CALL_FIELDS:
            ids = _span_ids() if _spans.TRACER is not None else None
            if ids is not None:
                head = {"trace_id": ids[0]} if ids[1] is None else {"trace_id": ids[0], "span_id": ids[1]}
                fields = {**head, **fields}
            elif (tid := _TRACE.get()) is not None:
                fields = {"trace_id": tid, **fields}
            sink.emit_json(_LEVELS.get(level) or logging.getLevelName(level), _EVENTS_NAME, name,
                           orjson.dumps(fields, default=str))
        else:
            direct.write_event(name, level, fields)
        return
    record = logging.LogRecord(EVENTS.name, level, "", 0, name, None, None)
    record.fields = fields
    EVENTS.handle(record)
