"""Testing kit for dspyo3 and its plugin authors.

* :class:`LMServer` — an OpenAI-compatible chat-completions server on loopback with scripted replies, latency
  and fault injection (429 + Retry-After, 5xx, hangs, malformed bodies) and SSE streaming;
* :func:`chat_reply`, :func:`field_responder` — answer in the shape DSPy's ChatAdapter parses;
* pytest fixtures in :mod:`dspyo3_core.testing.pytest_plugin`
  (``pytest_plugins = ["dspyo3_core.testing.pytest_plugin"]``);
* contract-test base classes in :mod:`dspyo3_core.testing.contracts`;
* :class:`PhoenixProcess` — Arize Phoenix on loopback, a real OpenTelemetry collector whose stored spans tests read
  back (:mod:`dspyo3_core.testing.phoenix`);
* :class:`RecordingTracer` — a tracer (``dspyo3_core.spans``) that keeps ended spans in a list, for tests of
  instrumented code;
* :func:`dspyo3_core.testing.readme.run_python_blocks` — run a README's Python examples and return what they print.
"""

from dspyo3_core.testing.phoenix import PhoenixProcess, find_phoenix, phoenix_server
from dspyo3_core.testing.server import (
    LMServer,
    Reply,
    chat_reply,
    field_responder,
    last_user_text,
    parse_fields,
)
from dspyo3_core.testing.tracer import RecordedSpan, RecordingTracer

__all__ = ["LMServer", "PhoenixProcess", "RecordedSpan", "RecordingTracer", "Reply", "chat_reply", "field_responder",
           "find_phoenix", "last_user_text", "parse_fields", "phoenix_server"]
