"""OpenTelemetry traces for dspyo3: the tracer production installs behind :mod:`dspyo3_core.spans`.

    [production.tracing]                      # or only the standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT)
    endpoint = "http://127.0.0.1:6006/v1/traces"
    protocol = "http/protobuf"                # or "grpc"
    headers = {authorization = "Bearer ..."}  # registered as secrets: never shown, masked in every span
    sample_ratio = 1.0
    service_name = "qa-api"
    capture_content = false                   # prompts and completions on LM spans (masked, cut short)
    modules = "inferred"                      # "callbacks": exact module/predictor/adapter spans (DSPy dispatch)

Spans are lean Python objects (:class:`Recorder`). When a sampled span ends, its plain values go to
``dspyo3_native.SpanSink`` (``encoder = "native"``, the default for OTLP over HTTP/protobuf): batching, OTLP
protobuf encoding, secret masking and the HTTP post happen in Rust on the sink's thread, off the GIL. Otherwise
(``encoder = "sdk"``, gRPC, a console or custom exporter, or no native extension) it becomes an OpenTelemetry SDK
``ReadableSpan`` handed to the SDK's ``BatchSpanProcessor``, behind a masking exporter. Either way every known
secret is removed from names, string attributes, event attributes and status texts before a span leaves the
process. OpenTelemetry is imported only when tracing is enabled (``pip install 'dspyo3-production[tracing]'``).

Library users open a root around a program call with :func:`span`, so the LM calls inside nest in one trace::

    from dspyo3_production import tracing
    with tracing.span("answer", question_id=qid):
        program(question=q)
"""

from __future__ import annotations

import atexit
import json
import os
import random
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from dspyo3_core import secrets, spans
from dspyo3_core.config import ConfigError, check_keys
from dspyo3_core.spans import CLIENT, CURRENT, INTERNAL, SERVER, AttrValue, SpanRef

__all__ = ["PROTOCOLS", "Recorder", "TracingConfig", "span"]

PROTOCOLS = ("http/protobuf", "grpc")
"""The OTLP protocols the exporter speaks."""
_MODULES = ("inferred", "callbacks", "off")
_OPENINFERENCE = ("auto", "nest", "ignore")
_EXPORTERS = ("otlp", "console", "none")
_ENCODERS = ("native", "sdk")
_DEFAULT_HTTP_ENDPOINT = "http://localhost:4318/v1/traces"
_TABLE_KEYS = {"enabled", "endpoint", "protocol", "headers", "timeout_s", "sample_ratio", "service_name",
               "resource", "capture_content", "max_content_chars", "modules", "exporter", "propagate",
               "trust_incoming", "openinference", "max_queue_size", "max_export_batch_size", "schedule_delay_ms",
               "encoder"}
_TRUE = {"1", "true", "yes", "on"}
_OI_MODULE = "openinference.instrumentation.dspy"
_EXTRA_HINT = "install the tracing extra: pip install 'dspyo3-production[tracing]'"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"
"""The semantic-conventions schema the span attributes follow (GenAI ``gen_ai.*`` names)."""


def _env_bool(environ: Mapping[str, str], name: str) -> bool | None:
    value = environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip().lower() in _TRUE


def _parse_headers(text: str) -> dict[str, str]:
    """``OTEL_EXPORTER_OTLP_HEADERS``: ``key=value`` pairs separated by commas, URL-encoded values."""
    from urllib.parse import unquote

    headers: dict[str, str] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip():
            headers[unquote(name.strip()).lower()] = unquote(value.strip())
    return headers


@dataclass
class TracingConfig:
    """How spans are sampled, what they carry and where they go.

    Args:
        enabled: record spans at all (``OTEL_SDK_DISABLED=true`` turns tracing off whatever this says).
        endpoint: the OTLP collector URL (HTTP: the full ``.../v1/traces`` URL; gRPC: ``host:port`` or a URL);
            None: the SDK exporter's own default (and ``OTEL_EXPORTER_OTLP_*``).
        protocol: ``"http/protobuf"`` or ``"grpc"``.
        headers: sent to the collector (authorization); their values are registered as secrets.
        timeout_s: the exporter's timeout per export.
        sample_ratio: the share of new traces recorded (parent-based: a child follows its parent's decision).
        service_name: the ``service.name`` resource attribute (else ``OTEL_SERVICE_NAME``, else ``dspyo3``).
        resource: more resource attributes (merged over ``OTEL_RESOURCE_ATTRIBUTES``).
        capture_content: record prompts and completions on LM spans (masked, cut to ``max_content_chars``).
        max_content_chars: the longest content attribute kept.
        modules: ``"inferred"`` (module and predictor spans inferred from DSPy's call stack, nearly free),
            ``"callbacks"`` (exact module/predictor/adapter/tool spans from a DSPy callback, which costs DSPy's
            callback dispatch) or ``"off"``.
        exporter: ``"otlp"``, ``"console"``, ``"none"``, or an OpenTelemetry ``SpanExporter`` object (tests pass the
            SDK's ``InMemorySpanExporter``).
        propagate: send a ``traceparent`` with LM requests (the native engine and NativeLM).
        trust_incoming: serve continues a trace named by an incoming ``traceparent``.
        openinference: ``"auto"``: when openinference's DSPy instrumentation is active, leave module spans to it;
            ``"nest"``: keep ours too; ``"ignore"``: do not look.
        max_queue_size, max_export_batch_size, schedule_delay_ms: the batch processor's sizes (None: the SDK's
            defaults and ``OTEL_BSP_*``).
        encoder: how ``otlp`` spans over ``http/protobuf`` are encoded and sent: ``"native"`` (the default: the
            Rust span sink of ``dspyo3-native`` batches, encodes and posts them off the GIL; spans cost the traced
            code about a microsecond each to hand over) or ``"sdk"`` (the OpenTelemetry SDK's batch processor and
            OTLP exporter, whose protobuf encoding runs in Python on its export thread). gRPC, ``console`` and
            exporter objects always go through the SDK; so does ``native`` when ``dspyo3-native`` lacks the sink.
        source: where this configuration came from (``"dspyo3.toml"``, ``"env"`` or ``"code"``), for status.
    """

    enabled: bool = True
    endpoint: str | None = None
    protocol: str = "http/protobuf"
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0
    sample_ratio: float = 1.0
    service_name: str | None = None
    resource: dict[str, Any] = field(default_factory=dict)
    capture_content: bool = False
    max_content_chars: int = 4000
    modules: str = "inferred"
    exporter: Any = "otlp"
    propagate: bool = True
    trust_incoming: bool = True
    openinference: str = "auto"
    max_queue_size: int | None = None
    max_export_batch_size: int | None = None
    schedule_delay_ms: int | None = None
    encoder: str = "native"
    source: str = "code"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"tracing protocol {self.protocol!r} is not supported: use one of {', '.join(PROTOCOLS)}")
        if self.modules not in _MODULES:
            raise ConfigError(f"tracing modules = {self.modules!r}: use one of {', '.join(_MODULES)}")
        if self.openinference not in _OPENINFERENCE:
            raise ConfigError(f"tracing openinference = {self.openinference!r}: use one of "
                              f"{', '.join(_OPENINFERENCE)}")
        if isinstance(self.exporter, str) and self.exporter not in _EXPORTERS:
            raise ConfigError(f"tracing exporter = {self.exporter!r}: use one of {', '.join(_EXPORTERS)} "
                              "(or pass an OpenTelemetry SpanExporter object)")
        if self.encoder not in _ENCODERS:
            raise ConfigError(f"tracing encoder = {self.encoder!r}: use one of {', '.join(_ENCODERS)}")
        if (self.endpoint is not None and self.protocol == "http/protobuf"
                and not (isinstance(self.endpoint, str) and self.endpoint.startswith(("http://", "https://"))
                         and spans.server_of(self.endpoint) is not None)):
            raise ConfigError(f"tracing endpoint = {self.endpoint!r} is not an http(s) URL with a host: use "
                              "http://host:4318/v1/traces")
        if not 0.0 <= float(self.sample_ratio) <= 1.0:
            raise ConfigError(f"tracing sample_ratio = {self.sample_ratio!r} must be between 0 and 1")
        if not isinstance(self.headers, dict):
            raise ConfigError("tracing headers must be a table of header name = value")
        self.headers = {str(k).lower(): str(v) for k, v in self.headers.items()}
        secrets.register_secret(*self.headers.values())

    # -- where a configuration comes from ----------------------------------------------------------------------
    @staticmethod
    def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
        """The configuration the standard ``OTEL_*`` variables give (only the keys they set)."""
        values: dict[str, Any] = {}
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                    or "").strip()
        if protocol:
            values["protocol"] = protocol
        if not endpoint:
            base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
            if base:
                endpoint = base if protocol == "grpc" else base.rstrip("/") + "/v1/traces"
        if endpoint:
            values["endpoint"] = endpoint
        headers = environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or environ.get("OTEL_EXPORTER_OTLP_HEADERS")
        if headers:
            values["headers"] = _parse_headers(headers)
        timeout = environ.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or environ.get("OTEL_EXPORTER_OTLP_TIMEOUT")
        if timeout:
            try:
                values["timeout_s"] = float(timeout) / 1000.0
            except ValueError:
                pass
        if environ.get("OTEL_SERVICE_NAME", "").strip():
            values["service_name"] = environ["OTEL_SERVICE_NAME"].strip()
        sampler = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
        if sampler in ("always_off", "parentbased_always_off"):
            values["sample_ratio"] = 0.0
        elif sampler in ("always_on", "parentbased_always_on"):
            values["sample_ratio"] = 1.0
        elif sampler in ("traceidratio", "parentbased_traceidratio"):
            try:
                values["sample_ratio"] = min(1.0, max(0.0, float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))))
            except ValueError:
                values["sample_ratio"] = 1.0
        capture = _env_bool(environ, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
        if capture is not None:
            values["capture_content"] = capture
        if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
            values["exporter"] = "console"
        return values

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TracingConfig | None:
        """The configuration the ``OTEL_*`` variables describe, or None (tracing off): tracing turns on when
        ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` is set (or ``OTEL_TRACES_EXPORTER=console``), unless
        ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``."""
        environ = os.environ if environ is None else environ
        if _env_bool(environ, "OTEL_SDK_DISABLED"):
            return None
        if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
            return None
        values = cls._env_values(environ)
        if "endpoint" not in values and values.get("exporter") != "console":
            return None
        try:
            return cls(source="env", **values)
        except ConfigError as exc:
            raise ConfigError(f"OTEL_* environment: {exc}") from None

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | bool, environ: Mapping[str, str] | None = None
                   ) -> TracingConfig | None:
        """``[production.tracing]`` (``true``: all defaults): its keys win over the ``OTEL_*`` variables, which win
        over the defaults. None when the table says ``enabled = false`` or ``OTEL_SDK_DISABLED=true``."""
        environ = os.environ if environ is None else environ
        if table is False:
            return None
        table = {} if table is True else dict(table)
        check_keys(table, _TABLE_KEYS, "[production.tracing]")
        if not table.get("enabled", True) or _env_bool(environ, "OTEL_SDK_DISABLED"):
            return None
        values = cls._env_values(environ)
        values.update({k: v for k, v in table.items() if k != "enabled"})
        try:
            return cls(source="dspyo3.toml", **values)
        except (ConfigError, TypeError, ValueError) as exc:
            raise ConfigError(f"[production.tracing]: {exc}") from None

    def status(self) -> dict[str, Any]:
        """What status commands show: never a header value."""
        exporter = self.exporter if isinstance(self.exporter, str) else type(self.exporter).__name__
        return {"enabled": self.enabled, "source": self.source, "exporter": exporter, "protocol": self.protocol,
                "endpoint": self.endpoint, "sample_ratio": self.sample_ratio,
                "service_name": self.service_name or os.environ.get("OTEL_SERVICE_NAME") or "dspyo3",
                "modules": self.modules, "capture_content": self.capture_content, "propagate": self.propagate,
                "encoder": self.encoder if self.native_sink() is not None else "sdk",
                "header_names": sorted(self.headers)}

    def native_sink(self) -> Any:
        """``dspyo3_native.SpanSink`` when this configuration exports through it, else None."""
        if self.encoder != "native" or self.exporter != "otlp" or self.protocol != "http/protobuf":
            return None
        try:
            import dspyo3_native
        except ImportError:
            return None
        return getattr(dspyo3_native, "SpanSink", None)


# -- the lean spans --------------------------------------------------------------------------------------------
_ID64 = (1 << 64) - 1


_bits = random.getrandbits
_tuple_new = tuple.__new__  # SpanRef(...) without the named tuple's Python-level __new__ (every span makes one)


def _new_id(bits: int) -> int:
    value = _bits(bits)
    while not value:
        value = _bits(bits)
    return value


class _Inferred:
    """A module or predictor span inferred from DSPy's ``caller_modules``: it spans its children."""

    __slots__ = ("attrs", "end_ns", "keep", "name", "parent", "ref", "start_ns")

    def __init__(self, name: str, ref: SpanRef, parent: SpanRef, start_ns: int, attrs: dict[str, AttrValue],
                 keep: Any) -> None:
        self.name, self.ref, self.parent, self.start_ns, self.attrs = name, ref, parent, start_ns, attrs
        self.end_ns = 0
        self.keep = keep  # the caller_modules list: alive until the root ends, so its id() is not reused


class _Span:
    """One span being recorded (or an unsampled one, which only carries its ids so they propagate)."""

    __slots__ = ("_chain", "_otel_token", "_ov_token", "_token", "attrs", "ended", "events", "kind", "name", "parent",
                 "recorder", "ref", "start_ns", "status", "widen")

    def __init__(self, recorder: Recorder, name: str, kind: int, ref: SpanRef, parent: SpanRef | None,
                 start_ns: int, attrs: dict[str, AttrValue] | None) -> None:
        self.recorder, self.name, self.kind, self.ref, self.parent = recorder, name, kind, ref, parent
        self.start_ns = start_ns
        self.attrs: dict[str, AttrValue] = attrs if attrs is not None else {}
        self.events: list[tuple[str, int, dict[str, AttrValue]]] | None = None
        self.status: str | None = None
        self.ended = False
        self._token: Any = None
        self._ov_token: Any = None
        self._otel_token: Any = None
        self._chain: dict[Any, _Inferred] | None = None  # inferred module spans under this chain base
        self.widen: list[_Inferred] | None = None  # inferred ancestors whose end follows this span's

    def set(self, key: str, value: AttrValue) -> None:
        self.attrs[key] = value

    def event(self, name: str, attrs: Mapping[str, AttrValue] | None = None) -> None:
        if self.ref.sampled:
            if self.events is None:
                self.events = []
            self.events.append((name, time.time_ns(), dict(attrs) if attrs else {}))

    def fail(self, error: BaseException | str, *, message: str | None = None) -> None:
        """Status ERROR, ``error.type`` and an ``exception`` event; ``message`` replaces the error's text (an
        already masked one)."""
        if isinstance(error, BaseException):
            kind, text = type(error).__name__, str(error) if message is None else message
        else:
            kind, text = "error", str(error) if message is None else message
        self.attrs["error.type"] = kind
        self.status = f"{kind}: {text}"[:1000]
        self.event("exception", {"exception.type": kind, "exception.message": text[:1000]})

    def end(self, end_ns: int | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        end = end_ns if end_ns is not None else time.time_ns()
        if self._token is not None:
            try:
                CURRENT.reset(self._token)
            except ValueError:  # ended in another context (a generator finalised elsewhere): leave that one alone
                pass
            self._token = None
            self.recorder._open.pop(self.ref.span_id, None)
        if self._ov_token is not None:
            try:
                _TLO.reset(self._ov_token)  # set by _set_overrides, so _TLO is loaded
            except ValueError:
                pass
            self._ov_token = None
        if self._otel_token is not None:
            try:
                self.recorder._otel_context.detach(self._otel_token)
            except Exception:  # another context's token: the SDK logs and ignores it
                pass
            self._otel_token = None
        if self.widen is not None:
            for inferred in self.widen:
                if end > inferred.end_ns:
                    inferred.end_ns = end
        if self.ref.sampled:
            rec = self.recorder
            if self._chain:
                for inferred in self._chain.values():
                    rec._emit(inferred.name, INTERNAL, inferred.ref, inferred.parent, inferred.start_ns,
                              inferred.end_ns or end, inferred.attrs, None, None)
            rec._emit(self.name, self.kind, self.ref, self.parent, self.start_ns, end, self.attrs, self.events,
                      self.status)

    def __enter__(self) -> _Span:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None:
            self.fail(exc)
        self.end()


_TLO: Any = None


def _overrides() -> Any:
    """DSPy's per-context settings overrides (``caller_modules``, and ``dspyo3_span`` set by a root)."""
    global _TLO
    if _TLO is None:
        from dspy.dsp.utils.settings import thread_local_overrides

        _TLO = thread_local_overrides
    return _TLO


def _set_overrides(ref: SpanRef) -> Any:
    var = _TLO or _overrides()
    # a plain dict (as dspy.Parallel's workers set): ``|`` clones the keys table in one go
    return var.set(var.get() | {"dspyo3_span": ref})


def _module_path(parent: Any, child: Any) -> str | None:
    """The attribute of ``parent`` holding ``child`` (``"generate"``, ``"steps[1]"``), if found cheaply."""
    try:
        for name, value in vars(parent).items():
            if value is child:
                return str(name)
            if isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if item is child:
                        return f"{name}[{i}]"
    except TypeError:
        return None
    return None


class Recorder:
    """The tracer production installs (:class:`dspyo3_core.spans.Tracer`): lean spans, exported through the native
    span sink or the OpenTelemetry SDK (see the module docstring).

    Args:
        config: the :class:`TracingConfig`.
    """

    def __init__(self, config: TracingConfig) -> None:
        self.config = config
        self.capture_content = bool(config.capture_content)
        self.propagate = bool(config.propagate)
        self.max_content_chars = int(config.max_content_chars)
        self.modules = config.modules
        self._bound = round(float(config.sample_ratio) * (1 << 64))  # as the SDK's TraceIdRatioBased
        self._open: dict[int, _Span] = {}  # live current spans of this process, by span id
        self._openinference = config.openinference
        self._instrumentor: Any = None  # openinference's DSPyInstrumentor, once its module is imported
        self._lock = threading.Lock()
        self._closed = False
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import Event, ReadableSpan
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope
            from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
            from opentelemetry.trace.status import Status, StatusCode
        except ImportError as exc:
            raise ConfigError(f"tracing is enabled but the OpenTelemetry SDK is missing ({exc}): {_EXTRA_HINT}") \
                from None
        attrs: dict[str, Any] = dict(config.resource)
        attrs.setdefault("service.name", config.service_name or os.environ.get("OTEL_SERVICE_NAME") or "dspyo3")
        self._resource = Resource.create(attrs)
        from dspyo3_production import __version__

        self._scope = InstrumentationScope("dspyo3", __version__, SCHEMA_URL)
        self._SpanContext, self._TraceFlags, self._Status, self._StatusCode = SpanContext, TraceFlags, Status, \
            StatusCode
        self._Event, self._ReadableSpan = Event, ReadableSpan
        self._unset = Status()
        from opentelemetry import context as otel_context
        from opentelemetry import trace as otel_trace

        self._otel_context, self._otel_trace = otel_context, otel_trace
        self._kinds = {INTERNAL: SpanKind.INTERNAL, SERVER: SpanKind.SERVER, CLIENT: SpanKind.CLIENT}
        self._flags = (TraceFlags(0), TraceFlags(1))
        bsp: dict[str, Any] = {}
        if config.max_queue_size:
            bsp["max_queue_size"] = int(config.max_queue_size)
        if config.max_export_batch_size:
            bsp["max_export_batch_size"] = int(config.max_export_batch_size)
        if config.schedule_delay_ms:
            bsp["schedule_delay_millis"] = float(config.schedule_delay_ms)
        self._sink: Any = None
        self._sink_secrets: Any = None  # the secrets_version() the sink last learned
        self.processor: Any = None
        sink = config.native_sink()
        if sink is not None:  # spans go to Rust as plain values: no SDK objects, no encoding under the GIL
            self._sink = sink(
                config.endpoint or _DEFAULT_HTTP_ENDPOINT, headers=list(config.headers.items()),
                resource=dict(self._resource.attributes), scope_name="dspyo3", scope_version=__version__,
                timeout_s=float(config.timeout_s), **{k: v for k, v in (
                    ("max_queue", config.max_queue_size), ("max_batch", config.max_export_batch_size),
                    ("delay_ms", config.schedule_delay_ms)) if v})
            self.exporter: Any = None
        else:
            self.exporter = MaskingExporter(self._exporter(config))
            self.processor = BatchSpanProcessor(self.exporter, **bsp)
        atexit.register(self.shutdown)

    @staticmethod
    def _exporter(config: TracingConfig) -> Any:
        if not isinstance(config.exporter, str):
            return config.exporter
        if config.exporter == "none":
            from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

            class _Drop(SpanExporter):
                def export(self, spans: Any) -> Any:
                    return SpanExportResult.SUCCESS

            return _Drop()
        if config.exporter == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            return ConsoleSpanExporter()
        kwargs: dict[str, Any] = {"timeout": config.timeout_s}
        if config.endpoint:
            kwargs["endpoint"] = config.endpoint
        if config.headers:
            kwargs["headers"] = dict(config.headers)
        import importlib

        try:
            module = importlib.import_module(f"opentelemetry.exporter.otlp.proto.{config.protocol.split('/')[0]}"
                                             ".trace_exporter")
        except ImportError as exc:
            raise ConfigError(f"tracing protocol {config.protocol!r} needs its OTLP exporter ({exc}): "
                              f"{_EXTRA_HINT}") from None
        if config.protocol == "grpc" and config.endpoint and config.endpoint.startswith("http://"):
            kwargs["insecure"] = True
        return module.OTLPSpanExporter(**kwargs)

    # -- spans.Tracer ------------------------------------------------------------------------------------------
    def _parent(self, parent: SpanRef | None, interop: bool = False) -> SpanRef | None:
        if parent is not None:
            return parent
        if interop:  # ours are attached to the OpenTelemetry context too: its span is the innermost
            found = self._otel_trace.get_current_span().get_span_context()
            if found.is_valid:
                own = self._open.get(found.span_id)
                return own.ref if own is not None else SpanRef(found.trace_id, found.span_id,
                                                               found.trace_flags.sampled)
        parent = CURRENT.get()
        if parent is not None:
            return parent
        return self._overrides_parent()

    @staticmethod
    def _overrides_parent() -> SpanRef | None:
        """The root a ``dspy.Parallel`` thread inherits: its threads carry DSPy's overrides but not contextvars."""
        try:
            ref = (_TLO or _overrides()).get().get("dspyo3_span")
        except Exception:
            return None
        return ref if isinstance(ref, SpanRef) else None

    def _interop(self) -> bool:
        """Whether spans interleave with the OpenTelemetry context: openinference's DSPy instrumentation is on
        (and ``openinference`` is not ``"ignore"``)."""
        if self._openinference == "ignore":
            return False
        instrumentor = self._instrumentor
        if instrumentor is None:
            module = sys.modules.get(_OI_MODULE)
            if module is None:
                return False
            try:  # a singleton: made once, its flag read on every span
                instrumentor = self._instrumentor = module.DSPyInstrumentor()
            except Exception:
                return False
        try:
            return bool(instrumentor.is_instrumented_by_opentelemetry)
        except Exception:
            return False

    def start(self, name: str, kind: int = INTERNAL, attrs: dict[str, AttrValue] | None = None, *,
              current: bool = True, start_ns: int | None = None, span_id: int | None = None,
              parent: SpanRef | None = None) -> _Span:
        # the hot path of every span: attribute reads and builtins only, helpers only off the common case
        interop = self._instrumentor is not None or _OI_MODULE in sys.modules
        if interop:
            interop = self._interop()
        if parent is None:
            parent = self._parent(None, True) if interop else (CURRENT.get() or self._overrides_parent())
        sid = span_id or _bits(64) or _new_id(64)
        start = start_ns if start_ns is not None else time.time_ns()
        base = None
        if parent is None:
            trace_id = _bits(128) or _new_id(128)
            ref = _tuple_new(SpanRef, (trace_id, sid, (trace_id & _ID64) < self._bound, False))
        else:
            ref = _tuple_new(SpanRef, (parent.trace_id, sid, parent.sampled, False))
            if not parent.remote:
                base = self._open.get(parent.span_id)
        span = _Span(self, name, kind, ref, parent, start, attrs)
        if base is not None and base._chain is not None and ref.sampled and self.modules == "inferred":
            span.parent, span.widen = self._infer(base, start)
        if current:
            span._token = CURRENT.set(ref)
            self._open[sid] = span
            if interop:  # foreign spans started meanwhile nest under this one
                ctx = self._SpanContext(ref.trace_id, sid, False, self._flags[ref.sampled])
                span._otel_token = self._otel_context.attach(
                    self._otel_trace.set_span_in_context(self._otel_trace.NonRecordingSpan(ctx)))
            if kind != CLIENT and (parent is None or parent.remote or (
                    attrs is not None and attrs.get("openinference.span.kind") in ("CHAIN", "AGENT"))):
                if self.modules == "inferred" and not (interop and self._openinference == "auto"):
                    span._chain = {}
                span._ov_token = _set_overrides(ref)
        return span

    def _infer(self, base: _Span, start: int) -> tuple[SpanRef, list[_Inferred] | None]:
        """The inferred module span a span started now under ``base`` nests in (made if new), and the inferred
        spans whose end follows it."""
        try:
            callers = (_TLO or _overrides()).get().get("caller_modules")
        except Exception:
            return base.ref, None
        if not callers:
            return base.ref, None
        chain = base._chain
        assert chain is not None
        parent = base.ref
        widen: list[_Inferred] = []
        key: tuple[int, ...] = ()
        last = len(callers) - 1
        for i, module in enumerate(callers):
            key = (*key, id(module))
            entry_key: Any = (key, id(callers)) if i == last else key
            inferred = chain.get(entry_key)
            if inferred is None:
                path = None
                if i > 0:
                    step = _module_path(callers[i - 1], module)
                    prev = chain.get(key[:-1])
                    prefix = prev.attrs.get("dspyo3.module.path") if prev is not None else None
                    path = f"{prefix}.{step}" if prefix and step else step
                cls = type(module).__name__
                attrs: dict[str, AttrValue] = {"dspyo3.module.class": cls, "dspyo3.span.inferred": True,
                                               "openinference.span.kind": "CHAIN"}
                if path:
                    attrs["dspyo3.module.path"] = path
                # setdefault: dspy.Parallel's threads may infer the same module at once; one span wins
                inferred = chain.setdefault(entry_key, _Inferred(
                    f"dspyo3.module {cls}", SpanRef(base.ref.trace_id, _new_id(64), True), parent, start, attrs,
                    callers if i == last else None))
            elif start < inferred.start_ns:
                inferred.start_ns = start
            widen.append(inferred)
            parent = inferred.ref
        return parent, widen

    def record(self, name: str, start_ns: int, end_ns: int, attrs: dict[str, AttrValue] | None = None, *,
               kind: int = INTERNAL, error: BaseException | str | None = None, span_id: int | None = None,
               parent: SpanRef | None = None) -> None:
        if parent is None:
            if self._instrumentor is not None or _OI_MODULE in sys.modules:
                parent = self._parent(None, self._interop())
            else:
                parent = CURRENT.get() or self._overrides_parent()
        if parent is None:
            trace_id = _bits(128) or _new_id(128)
            sampled = (trace_id & _ID64) < self._bound
        else:
            trace_id, sampled = parent.trace_id, parent.sampled
        if not sampled:
            return
        ref = _tuple_new(SpanRef, (trace_id, span_id or _bits(64) or _new_id(64), True, False))
        if error is None:
            self._emit(name, kind, ref, parent, start_ns, end_ns, attrs or {}, None, None)
            return
        span = _Span(self, name, kind, ref, parent, start_ns, attrs)
        span.fail(error)
        span.end(end_ns)

    def traceparent(self, span_id: int | None = None) -> str | None:
        ref = self._parent(None, self._interop())
        return spans.format_traceparent(ref, span_id) if ref is not None else None

    def current_span(self) -> _Span | None:
        """The live span object of :data:`~dspyo3_core.spans.CURRENT`, when this recorder started it."""
        ref = CURRENT.get()
        return self._open.get(ref.span_id) if ref is not None else None

    # -- export ------------------------------------------------------------------------------------------------
    def _emit(self, name: str, kind: int, ref: SpanRef, parent: SpanRef | None, start_ns: int, end_ns: int,
              attrs: Mapping[str, AttrValue], events: list[tuple[str, int, dict[str, AttrValue]]] | None,
              status: str | None) -> None:
        if self._closed:
            return
        sink = self._sink
        if sink is not None:
            # the sink masks on its thread: tell it what to mask when that may have changed (a secret registered:
            # checked on every span; variables added to the environment: checked when a trace's root ends)
            synced = self._sink_secrets
            if synced is None or synced[0] != secrets.registered_version or parent is None or parent.remote:
                self._sync_secrets(sink)
            sink.push(name, kind, ref.trace_id, ref.span_id, 0 if parent is None else parent.span_id,
                      parent is not None and parent.remote, start_ns, end_ns, attrs, events, status)
            return
        Event, ReadableSpan = self._Event, self._ReadableSpan
        ctx = self._SpanContext(ref.trace_id, ref.span_id, False, self._flags[1])
        parent_ctx = (None if parent is None else
                      self._SpanContext(parent.trace_id, parent.span_id, parent.remote, self._flags[parent.sampled]))
        span = ReadableSpan(
            name, ctx, parent_ctx, self._resource, dict(attrs),
            tuple(Event(n, a, t) for n, t, a in events) if events else (),
            kind=self._kinds.get(kind, self._kinds[INTERNAL]), status=(
                self._Status(self._StatusCode.ERROR, status) if status is not None else self._unset),
            start_time=start_ns, end_time=end_ns, instrumentation_scope=self._scope)
        self.processor.on_end(span)

    def _sync_secrets(self, sink: Any) -> None:
        version = secrets.secrets_version()
        if version != self._sink_secrets:
            self._sink_secrets = version
            sink.set_secrets([(value, secrets.mask_secret(value)) for value in _redactor().values])

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Export every span ended so far (blocks up to ``timeout_s``)."""
        if self._closed:
            return True
        if self._sink is not None:
            return bool(self._sink.flush(timeout_s))
        return bool(self.processor.force_flush(int(timeout_s * 1000)))

    def shutdown(self) -> None:
        """Flush and stop the export thread (spans ended later are dropped); a second call does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            atexit.unregister(self.shutdown)
        except Exception:
            pass
        if self._sink is not None:
            self._sink.shutdown(float(self.config.timeout_s))
        else:
            self.processor.shutdown()

    # -- helpers for instrumentation ---------------------------------------------------------------------------
    def content(self, value: Any) -> str:
        """``value`` (messages, a prompt, outputs) as masked JSON text, cut to ``max_content_chars``."""
        try:
            text = json.dumps(secrets.masked(value), default=str, ensure_ascii=False)
        except Exception:
            text = str(value)
        return _redactor().text(text)[: self.max_content_chars]


_REDACTOR: tuple[Any, secrets.Redactor] | None = None


def _redactor() -> secrets.Redactor:
    """A redactor of every known secret, rebuilt only when they may have changed (``secrets.redact`` rebuilds
    its view of the environment on each call, far too slow for every span attribute)."""
    global _REDACTOR
    version = secrets.secrets_version()
    current = _REDACTOR
    if current is None or current[0] != version:
        current = _REDACTOR = (version, secrets.Redactor())
    return current[1]


def _mask_value(value: Any, red: secrets.Redactor) -> Any:
    if isinstance(value, str):
        return red.text(value)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
        return tuple(red.text(v) if isinstance(v, str) else v for v in value)
    return value


def _masked_attrs(attrs: Any, red: secrets.Redactor) -> dict[str, Any] | None:
    """``attrs`` with secrets masked, or None when nothing changed."""
    if not attrs:
        return None
    out = None
    for key, value in attrs.items():
        masked = _mask_value(value, red)
        if masked is not value and masked != value:
            if out is None:
                out = dict(attrs)
            out[key] = masked
    return out


class MaskingExporter:
    """An OpenTelemetry ``SpanExporter`` that masks every known secret (:func:`dspyo3_core.secrets.redact`) in
    string attributes, event attributes and status descriptions, then hands the spans to ``inner``. It runs on
    the batch processor's thread, off the calls being traced."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def _mask(self, span: Any, red: secrets.Redactor) -> Any:
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.trace.status import Status

        attrs = _masked_attrs(span.attributes, red)
        events = span.events
        new_events = None
        for i, event in enumerate(events):
            masked = _masked_attrs(event.attributes, red)
            if masked is not None:
                if new_events is None:
                    new_events = list(events)
                new_events[i] = Event(event.name, masked, event.timestamp)
        status = span.status
        description = status.description
        new_status = None
        if description:
            masked_text = red.text(description)
            if masked_text != description:
                new_status = Status(status.status_code, masked_text)
        if attrs is None and new_events is None and new_status is None:
            return span
        return ReadableSpan(
            span.name, span.context, span.parent, span.resource,
            attrs if attrs is not None else span.attributes, tuple(new_events) if new_events is not None else events,
            span.links, span.kind, status=new_status or status, start_time=span.start_time,
            end_time=span.end_time, instrumentation_scope=span.instrumentation_scope)

    def export(self, spans_: Any) -> Any:
        red = _redactor()
        return self.inner.export([self._mask(s, red) for s in spans_])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        flush = getattr(self.inner, "force_flush", None)
        return bool(flush(timeout_millis)) if flush is not None else True


class _Off:
    """What :func:`span` returns while tracing is off: a context manager yielding None."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


_OFF = _Off()


def span(name: str, **attrs: AttrValue) -> Any:
    """A root (or child) span around your own code, e.g. one program call, so the LM calls inside form one
    trace with inferred module and predictor spans. A context manager yielding the span (None when tracing is
    off); leaving it with an exception fails the span."""
    tracer = spans.TRACER
    if tracer is None:
        return _OFF
    attrs.setdefault("openinference.span.kind", "CHAIN")
    return tracer.start(name, INTERNAL, attrs)


def check_table(table: Any) -> None:
    """Raise :class:`ConfigError` for unknown ``[production.tracing]`` keys."""
    if isinstance(table, dict):
        check_keys(table, _TABLE_KEYS, "[production.tracing]")
