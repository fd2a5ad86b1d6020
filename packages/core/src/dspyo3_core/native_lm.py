"""``NativeLM``: a ``dspy.BaseLM`` whose HTTP runs in Rust (``dspyo3_native.LMTransport``) instead of LiteLLM.

A drop-in for ``dspy.LM`` on OpenAI-compatible servers (OpenAI, vLLM, Ollama, llama.cpp server, Together,
gateways that speak the OpenAI routes, ...) and Anthropic's messages API, built for the case where the client's
CPU per call matters: the request body is built, sent (pooled HTTP/1.1 or HTTP/2, TLS), retried (full-jitter
backoff honouring ``Retry-After``) and parsed on tokio, with the GIL released; the Python side is one dictionary
merge and a history entry.

What stays DSPy's: the response shape adapters see (a list of strings, or dicts with ``tool_calls`` /
``reasoning_content``), ``dspy.cache`` (same enable/disable switches, hits marked ``cache_hit`` and not billed
again), ``dspy.track_usage``, history and ``inspect_history``, callbacks, DSPy's typed errors
(``LMRateLimitError.retry_after``, ``LMTimeoutError``, ``LMAuthError``, ``ContextWindowExceededError``, ...) and
token streaming through ``dspy.streamify``. Calls go through the ``dspyo3_lm_call`` hook like
:class:`~dspyo3_core.lm.HookedLM`'s whenever a plugin wraps it, so production wrappers see them.

Select it per profile with ``transport = "native"``, or build it directly::

    lm = NativeLM("openai/gpt-4o-mini")                       # key from OPENAI_API_KEY
    lm = NativeLM("anthropic/claude-sonnet-4-5")              # key from ANTHROPIC_API_KEY
    lm = NativeLM("openai/qwen", api_base="http://127.0.0.1:8000/v1", api_key="EMPTY")
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import inspect
import itertools
import os
import re
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import dspy
from dspy.dsp.utils.settings import settings
from dspy.utils.callback import with_callbacks as _with_callbacks

from dspyo3_core import spans
from dspyo3_core.call import wrappers_async_aware
from dspyo3_core.lm import LMCall, lm_callbacks_wanted, manager_token, note_result, plugin_manager_for, wrappers_active
from dspyo3_core.pricing import PRICING as PRICING  # re-exported: PRICING and PricingTable once lived here
from dspyo3_core.pricing import PricingTable as PricingTable
from dspyo3_core.secrets import SECRET_HEADER, register_secret, secret_values

try:  # dspy.LM's own rule, so both send the same request; a private name, so a DSPy that moves it gets ours
    from dspy.clients.lm import _is_openai_reasoning_model
except ImportError:  # pragma: no cover - the rule as of DSPy 3.4
    def _is_openai_reasoning_model(model: str) -> bool:
        family = model.split("/")[-1].lower()
        return re.match(r"^(?:o[1345](?:-(?:mini|nano|pro))?(?:-\d{4}-\d{2}-\d{2})?|gpt-5(?:\.\d+)*(?!-chat)"
                        r"(?:-.*)?)$", family) is not None

if TYPE_CHECKING:
    from dspyo3_core.plugins import PluginManager

_F = TypeVar("_F", bound=Callable[..., Any])


def with_callbacks(fn: _F) -> _F:
    """DSPy's ``with_callbacks``, skipped when no active callback wants LM events (see ``lm_callbacks_wanted``)."""
    dispatched = _with_callbacks(fn)
    if asyncio.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def async_call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if lm_callbacks_wanted(self):
                return await dispatched(self, *args, **kwargs)
            return await fn(self, *args, **kwargs)

        return async_call  # type: ignore[return-value]

    @functools.wraps(fn)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if lm_callbacks_wanted(self):
            return dispatched(self, *args, **kwargs)
        return fn(self, *args, **kwargs)

    return call  # type: ignore[return-value]

# provider prefix -> (wire format, default api_base, key environment variable)
PROVIDERS: dict[str, tuple[str, str | None, str | None]] = {
    "openai": ("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    "anthropic": ("anthropic", "https://api.anthropic.com/v1", "ANTHROPIC_API_KEY"),
    "together_ai": ("openai", "https://api.together.xyz/v1", "TOGETHERAI_API_KEY"),
    "ollama": ("openai", "http://localhost:11434/v1", None),
    "ollama_chat": ("openai", "http://localhost:11434/v1", None),
    "hosted_vllm": ("openai", None, None),
}

_CACHE_ID = "dspyo3_core.native_lm.NativeLM"
# per-call options that are DSPy's, not the provider's
_DSPY_ONLY = frozenset({"cache", "rollout_id", "n", "num_generations", "stream", "use_developer_role"})
# where a provider's chat route wants the output-token cap (as dspy.LM sends it): OpenAI's own API takes
# `max_completion_tokens` (`max_tokens` is deprecated there and refused by reasoning models); vLLM and Ollama take
# `max_tokens`; the rest get the name they were given
_MAX_TOKENS_FIELD: dict[str, str] = {"openai": "max_completion_tokens", "hosted_vllm": "max_tokens",
                                     "ollama": "max_tokens", "ollama_chat": "max_tokens"}
_REASONING_RULE = ("OpenAI's reasoning models require passing temperature=1.0 or None and max_tokens >= 16000 or "
                   "None to `NativeLM(...)`, e.g., NativeLM('openai/gpt-5', temperature=1.0, max_tokens=16000)")
# connection settings belong to the LM (its Rust client), not to one call
_PER_LM = frozenset({"api_key", "api_base", "base_url", "headers", "extra_headers", "timeout", "num_retries",
                     "max_event_bytes", "max_response_bytes"})
MAX_EVENT_BYTES = 16 * 1024 * 1024
"""Default largest stream event NativeLM accepts (``max_event_bytes``)."""
MAX_RESPONSE_BYTES = 128 * 1024 * 1024
"""Default largest answer NativeLM accepts, a whole stream or a non-streamed body (``max_response_bytes``)."""
_SECRET_HEADER = SECRET_HEADER  # never pickled or saved
# whether note_result takes the response details (finish_reasons, response_model, response_id)
_NOTE_DETAILS = {"finish_reasons", "response_model", "response_id"} <= set(inspect.signature(note_result).parameters)


def _tracer() -> spans.Tracer | None:
    """The tracer when outgoing requests carry a ``traceparent``: tracing on, propagating, inside a span."""
    tracer = spans.TRACER
    if tracer is None or not tracer.propagate or spans.CURRENT.get() is None:
        return None
    return tracer


def _record_attempts(tracer: spans.Tracer, url: str, attempts: Any) -> None:
    """One CLIENT span per HTTP attempt the transport reports, under :data:`spans.CURRENT` (the LM call), each
    with the span id its ``traceparent`` carried."""
    if not attempts:
        return
    host, port, path = spans.server_of(url) or ("", 80, "/")
    for index, (span_hex, start_ns, end_ns, status, kind) in enumerate(attempts):
        attrs: dict[str, spans.AttrValue] = {"http.request.method": "POST", "server.address": host,
                                             "server.port": port, "url.path": path}
        if status is not None:
            attrs["http.response.status_code"] = status
        if index:
            attrs["http.request.resend_count"] = index
        if kind is not None:
            attrs["error.type"] = kind
        tracer.record("POST", start_ns, end_ns, attrs, kind=spans.CLIENT, span_id=int(span_hex, 16), error=kind)


def _error_attempts(exc: BaseException) -> Any:
    """The attempts a traced request's ``LMTransportError`` carries (its 5th argument), else ``None``."""
    return exc.args[4] if len(exc.args) > 4 else None


def traced(transport: Any, send: Callable[..., Any], attempts_of: Callable[[Any], Any]) -> Any:
    """``send()``; inside a traced span ``send(traceparent=...)``, its HTTP attempts (``attempts_of`` its result,
    or the error's) recorded as spans."""
    tracer = _tracer()
    traceparent = tracer.traceparent() if tracer is not None else None
    if tracer is None or traceparent is None:
        return send()
    try:
        result = send(traceparent=traceparent)
    except native_extension().LMTransportError as exc:
        _record_attempts(tracer, transport.url, _error_attempts(exc))
        raise
    _record_attempts(tracer, transport.url, attempts_of(result))
    return result


async def atraced(transport: Any, send: Callable[..., Any], attempts_of: Callable[[Any], Any]) -> Any:
    """Async :func:`traced`: ``send`` returns an awaitable."""
    tracer = _tracer()
    traceparent = tracer.traceparent() if tracer is not None else None
    if tracer is None or traceparent is None:
        return await send()
    try:
        result = await send(traceparent=traceparent)
    except native_extension().LMTransportError as exc:
        _record_attempts(tracer, transport.url, _error_attempts(exc))
        raise
    _record_attempts(tracer, transport.url, attempts_of(result))
    return result


def answer_attempts(answer: Any) -> Any:
    return answer[4]


def stream_attempts(events: Any) -> Any:
    return events.attempts


def native_extension() -> Any:
    try:
        import dspyo3_native
    except ImportError as exc:  # pragma: no cover - the workspace always has it
        raise ImportError(
            "the native transport (transport = \"native\", NativeLM) needs the dspyo3-native extension, which is not "
            "installed; install it with `pip install dspyo3-native` (from a checkout: `pip install "
            "./crates/dspyo3-native`, or `hatch run native` in the hatch environment), or remove transport = "
            "\"native\" from the profile"
        ) from exc
    return dspyo3_native


def _error(lm: NativeLM, exc: BaseException) -> Exception:
    """``dspyo3_native.LMTransportError`` -> DSPy's typed LM error."""
    from dspy.utils import exceptions as ex

    message, kind, status, retry_after = (list(exc.args) + [None] * 4)[:4]
    meta: dict[str, Any] = {"model": lm.model, "provider": lm.provider, "status": status}
    classes: dict[str, Any] = {
        "rate_limit": ex.LMRateLimitError, "auth": ex.LMAuthError, "invalid_request": ex.LMInvalidRequestError,
        "server": ex.LMServerError, "timeout": ex.LMTimeoutError, "connect": ex.LMTransportError,
        "config": ex.LMConfigurationError,
    }
    error: Exception
    if kind == "too_large":  # the same request would get the same answer: never retried
        error = ex.LMCollectionLimitError(message, code="response_too_large", **meta)
    elif kind == "context_length":
        error = ex.ContextWindowExceededError(message=message, **meta)
    elif kind in ("rate_limit", "server"):
        error = classes[kind](message, retry_after=retry_after, **meta)
    elif kind in classes:
        error = classes[kind](message, **meta)
    else:  # protocol: a 200 whose body is not an answer (or a stream that broke off)
        error = ex.LMProviderError(message, code="malformed_response", **{**meta, "status": status or 200})
    return error


class _LoopBridge:
    """Finished native requests for one asyncio loop: the Rust side pushes results to a completion queue and
    writes a wake-up byte; the loop drains every finished request in one reader callback. No tokio thread ever
    waits for the GIL, and a busy loop pays one wake-up per batch, not one per request."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.queue = native_extension().CompletionQueue()
        self.futures: dict[int, asyncio.Future[Any]] = {}
        self.tokens = itertools.count()
        loop.add_reader(self.queue.fileno(), self._drain)

    def _drain(self) -> None:
        futures = self.futures
        for token, ok, value in self.queue.drain():
            future = futures.pop(token, None)
            if future is None or future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


_BRIDGES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBridge] = weakref.WeakKeyDictionary()


def _bridge(loop: asyncio.AbstractEventLoop) -> _LoopBridge:
    bridge = _BRIDGES.get(loop)
    if bridge is None:
        bridge = _BRIDGES[loop] = _LoopBridge(loop)
    return bridge


async def submit(transport: Any, model: str, messages: list[Any], params: dict[str, Any],
                  traceparent: str | None = None) -> Any:
    loop = asyncio.get_running_loop()
    bridge = _bridge(loop)
    token = next(bridge.tokens)
    if traceparent is None:
        request = transport.submit(bridge.queue, token, model, messages, params)
    else:
        request = transport.submit(bridge.queue, token, model, messages, params, traceparent=traceparent)
    # registered after submit (a refused request leaves nothing behind); the queue is only drained on this loop's
    # thread, after this coroutine yields, so the result cannot arrive first
    future = bridge.futures[token] = loop.create_future()
    try:
        return await future
    except asyncio.CancelledError:
        request.cancel()  # drops the HTTP request mid-flight
        bridge.futures.pop(token, None)
        raise


def header_pairs(headers: Mapping[str, str] | list[Any] | None) -> list[tuple[str, str]]:
    """Headers as a list of ``(name, value)`` pairs, from a dict, pairs, or the lists JSON state gives back."""
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or [])
    return [(str(name), str(value)) for name, value in pairs]


def _check_reasoning(lm: NativeLM, temperature: float | None, max_tokens: int | None) -> None:
    """``dspy.LM``'s rule for OpenAI reasoning models, with its error."""
    if (temperature and temperature != 1.0) or (max_tokens and max_tokens < 16000):
        from dspy.utils.exceptions import LMConfigurationError

        raise LMConfigurationError(_REASONING_RULE, model=lm.model, provider=lm.provider)


try:  # lm15's rule, so the native paths send DSPy's body; a private name, so a DSPy that moves it gets ours
    from dspy._vendor.lm15.providers.anthropic import _default_max_tokens as _anthropic_max_tokens
except ImportError:  # pragma: no cover - the rule as of DSPy 3.4
    def _anthropic_max_tokens(model: str) -> int:
        lowered = model.lower()
        for marker, ceiling in (("claude-3-haiku", 4096), ("claude-3-opus", 4096), ("claude-3-sonnet", 4096),
                                ("claude-3-5-", 8192), ("claude-3.5-", 8192)):
            if marker in lowered:
                return ceiling
        return 16384


def anthropic_defaults(model: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` for Anthropic's messages API as ``dspy.LM`` fills them, in place: ``max_tokens`` (required there)
    defaults to lm15's ceiling for the model's class (16384; 8192 for Claude 3.5; 4096 for Claude 3), or, with
    extended ``thinking`` (which DSPy sends through LiteLLM), to the thinking budget plus LiteLLM's 4096; a whole
    float cap is sent as an integer; a ``temperature`` above the API's ceiling of 1 is sent as 1 (DSPy's canonical
    range is 0-2)."""
    for name in ("max_tokens", "max_completion_tokens"):
        value = params.get(name)
        if isinstance(value, float) and value.is_integer():
            params[name] = int(value)
    if params.get("max_tokens") is None and params.get("max_completion_tokens") is None:
        thinking = params.get("thinking")
        budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
        if isinstance(budget, int) and not isinstance(budget, bool):
            params["max_tokens"] = budget + 4096
        else:
            params["max_tokens"] = _anthropic_max_tokens(model)
    temperature = params.get("temperature")
    if isinstance(temperature, (int, float)) and temperature > 1.0:
        params["temperature"] = 1.0
    return params


def max_tokens_field(provider: str, wire: str) -> str | None:
    """The name the output-token cap is sent under for ``provider`` (None: as given)."""
    return _MAX_TOKENS_FIELD.get(provider) if wire == "openai" else None


class Route(NamedTuple):
    """Where the native transport sends a model's requests (:func:`route`)."""

    provider: str
    wire_model: str
    wire: str
    api_base: str
    default_base: str | None
    key_env: str | None

    def key(self, api_key: str | None) -> str | None:
        """``api_key``, else the provider's key variable from the environment."""
        if api_key is not None:
            return api_key
        return os.environ.get(self.key_env) if self.key_env else None


def route(model: str, api_base: str | None, wire: str | None, who: str) -> Route:
    """The provider, served model name, wire format and endpoint of ``model`` (``provider/model``; with no known
    prefix the whole string is the served model's name). ``ValueError`` (naming ``who``) when the provider has no
    default endpoint and ``api_base`` is not given."""
    provider, _, bare = model.partition("/")
    if provider not in PROVIDERS:  # no known route prefix: the whole string is the served model's name
        provider, bare = ("custom", model) if api_base else ("openai", model)
    default_wire, default_base, key_env = PROVIDERS.get(provider, ("openai", None, None))
    base = api_base or default_base
    if not base:
        raise ValueError(f"{who}: provider {provider!r} has no default endpoint; pass api_base='http://host:port/v1'")
    return Route(provider, bare, wire or default_wire, base, default_base, key_env)


def byte_limit(name: str, value: Any) -> int:
    """A size limit in bytes: an int > 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a number of bytes > 0 (an int), got {value!r}")
    return value


class _Record(dict[str, Any]):
    """The stored response (plain data, safe for DSPy's restricted cache) with attribute access for history."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _outputs(record: Mapping[str, Any]) -> list[Any]:
    outputs: list[Any] = []
    for choice in record["choices"]:
        output: dict[str, Any] = {"text": choice["content"]}
        if choice.get("reasoning"):
            output["reasoning_content"] = choice["reasoning"]
        if choice.get("tool_calls"):
            output["tool_calls"] = choice["tool_calls"]
        outputs.append(output)
    if all(len(o) == 1 for o in outputs):
        return [o["text"] for o in outputs]
    return outputs


class NativeLM(dspy.BaseLM):
    """A ``dspy.BaseLM`` on the Rust transport. Construct it like ``dspy.LM``.

    Args:
        model: ``provider/model``: ``openai/...`` (and any OpenAI-compatible server with ``api_base``),
            ``anthropic/...`` (messages API), ``together_ai/...``, ``ollama_chat/...``, ``hosted_vllm/...``; with
            ``api_base``, a string without a known prefix (``meta-llama/Llama-3-8B``) is sent as written.
        api_base: endpoint base URL (``.../v1``); defaults per provider, required for self-hosted servers.
        api_key: the key; defaults to the provider's environment variable. Held by the LM object and its Rust
            client only: never in ``kwargs``, ``dump_state``, pickles, history or ``repr``.
        wire: ``"openai"`` or ``"anthropic"``; inferred from the provider.
        model_type: only ``"chat"``.
        temperature, max_tokens: default request options, checked and sent the way ``dspy.LM`` does: OpenAI
            reasoning models (``o1``, ``o3-mini``, ``o4-mini``, ``gpt-5``, ``gpt-5-mini``, ... but not
            ``gpt-5-chat``) take ``temperature`` 1.0 or None and ``max_tokens`` >= 16000 or None (else
            ``LMConfigurationError``), kept as ``max_completion_tokens``; on ``openai/`` models the cap is sent as
            ``max_completion_tokens``, on ``hosted_vllm/`` and ``ollama_chat/`` as ``max_tokens``.
        use_developer_role: accepted and saved like ``dspy.LM``'s; it only changes Responses API requests (system
            messages sent as ``developer``), and NativeLM speaks chat completions, whose requests keep the system
            role exactly as ``dspy.LM`` sends them.
        cache: use ``dspy.cache`` (per call: ``cache=False``).
        num_retries: retries of 429 / 5xx / timeouts / broken connections, done in Rust with full-jitter backoff
            that waits ``Retry-After`` when the server sends one.
        timeout: seconds for one attempt's whole answer (for streams: the wait for headers, then the longest
            silence between chunks); ``connect_timeout`` for opening a connection.
        http2: speak HTTP/2 without TLS (h2c) to servers that need it; over https HTTP/2 is negotiated anyway.
        headers: extra request headers (list of pairs or dict).
        ca_cert: a PEM file of CA certificates trusted besides the Mozilla roots (corporate proxies, self-signed
            gateways).
        max_event_bytes: largest stream event accepted (default 16 MiB).
        max_response_bytes: largest answer accepted, a non-streamed body or a whole stream (default 128 MiB).
            Going over either raises ``dspy.utils.exceptions.LMCollectionLimitError`` (code
            ``response_too_large``) naming the limit and the setting, and is not retried.
        pricing: ``{"input_per_mtok": .., "output_per_mtok": ..}`` for this LM, overriding :data:`PRICING`.
        callbacks: DSPy callbacks.
        plugin_manager: the manager whose ``dspyo3_lm_call`` wrappers see this LM's calls (default: the process's).
        **kwargs: more default request options (``top_p``, ``stop``, ``seed``, ...).
    """

    _warned_zero_temp_rollout: bool = False  # set per LM by dspy.BaseLM.__init__

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        wire: str | None = None,
        model_type: str = "chat",
        temperature: float | None = None,
        max_tokens: int | None = None,
        cache: bool = True,
        num_retries: int = 3,
        use_developer_role: bool = False,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        http2: bool = False,
        headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
        ca_cert: str | os.PathLike[str] | None = None,
        max_event_bytes: int = MAX_EVENT_BYTES,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        pricing: Mapping[str, float] | None = None,
        callbacks: list[Any] | None = None,
        plugin_manager: PluginManager | None = None,
        **kwargs: Any,
    ) -> None:
        if model_type != "chat":
            raise ValueError(f"NativeLM speaks chat APIs only (model_type={model_type!r}); use dspy.LM for text or "
                             "responses models")
        for name in ("engine", "async_engine", "provider"):
            if name in kwargs:
                raise TypeError(f"NativeLM takes no {name}=; it is its own transport (use dspy.LM for engines)")
        # dspy.LM / LiteLLM spellings of connection settings: they configure the client, never the request body
        if "base_url" in kwargs:
            api_base = api_base or kwargs.pop("base_url")
        if "extra_headers" in kwargs:
            headers = kwargs.pop("extra_headers") if headers is None else headers
        leftover = _PER_LM.intersection(kwargs)
        if leftover:
            raise TypeError(f"NativeLM: {sorted(leftover)} given twice or under two names")
        found = route(model, api_base, wire, f"NativeLM({model!r})")
        self.provider, self.wire, self.api_base, self.wire_model = (found.provider, found.wire, found.api_base,
                                                                    found.wire_model)
        self.timeout, self.connect_timeout, self.http2 = float(timeout), float(connect_timeout), bool(http2)
        self.headers = header_pairs(headers)
        self.ca_cert = os.fspath(ca_cert) if ca_cert is not None else None
        self.use_developer_role = bool(use_developer_role)
        self._max_tokens_field = max_tokens_field(self.provider, self.wire)
        self.max_event_bytes = byte_limit("max_event_bytes", max_event_bytes)
        self.max_response_bytes = byte_limit("max_response_bytes", max_response_bytes)
        self.pricing = dict(pricing) if pricing is not None else None
        if self.pricing is not None and set(self.pricing) != {"input_per_mtok", "output_per_mtok"}:
            raise ValueError("pricing must be {'input_per_mtok': USD, 'output_per_mtok': USD}")
        super().__init__(model, model_type="chat", temperature=temperature, max_tokens=max_tokens, cache=cache,
                         callbacks=callbacks, num_retries=num_retries, **kwargs)
        self._key_env = found.key_env
        self._api_key = found.key(api_key)
        register_secret(self._api_key, *secret_values({"headers": self.headers}))
        self._transport = self._build_transport()
        self._dspyo3_pm_token = manager_token(plugin_manager) if plugin_manager is not None else None
        self._warn_zero_temp_rollout(self.kwargs.get("temperature"), self.kwargs.get("rollout_id"))

    def _warn_zero_temp_rollout(self, temperature: Any, rollout_id: Any) -> None:
        """``dspy.LM``'s one-time warning: a ``rollout_id`` changes nothing at temperature 0."""
        if rollout_id is not None and temperature == 0 and not self._warned_zero_temp_rollout:
            import warnings

            warnings.warn("rollout_id has no effect when temperature=0; set temperature>0 to bypass the cache.",
                          stacklevel=3)
            self._warned_zero_temp_rollout = True

    def _get_initial_kwargs(self, *, temperature: float | None, max_tokens: int | None,
                            **kwargs: Any) -> dict[str, Any]:
        """The default request options, with ``dspy.LM``'s rules for OpenAI reasoning models: ``temperature`` 1.0 or
        None, ``max_tokens`` >= 16000 or None (else ``LMConfigurationError``), kept as ``max_completion_tokens``."""
        if not _is_openai_reasoning_model(self.model):
            initial: dict[str, Any] = super()._get_initial_kwargs(temperature=temperature, max_tokens=max_tokens,
                                                                  **kwargs)
        else:
            if "max_completion_tokens" in kwargs:
                if max_tokens is not None:
                    raise TypeError("pass max_tokens or max_completion_tokens, not both")
                max_tokens = kwargs.pop("max_completion_tokens")
            _check_reasoning(self, temperature, max_tokens)
            initial = dict(temperature=temperature, max_completion_tokens=max_tokens, **kwargs)
        if initial.get("rollout_id") is None:
            initial.pop("rollout_id", None)
        return initial

    def _public_headers(self) -> list[tuple[str, str]]:
        """The headers that may be saved: secret ones (Authorization, api-key, tokens, cookies, ...) left out."""
        return [(k, v) for k, v in self.headers if not _SECRET_HEADER.search(k)]

    def _build_transport(self) -> Any:
        return native_extension().LMTransport(
            self.api_base, api_key=self._api_key, wire=self.wire, timeout=self.timeout,
            connect_timeout=self.connect_timeout, max_retries=int(self.num_retries), http2=self.http2,
            headers=self.headers or None, ca_cert=self.ca_cert,
            max_event_bytes=byte_limit("max_event_bytes", self.max_event_bytes),
            max_response_bytes=byte_limit("max_response_bytes", self.max_response_bytes),
        )

    # -- DSPy LM surface ---------------------------------------------------------------------------------------

    @property
    def supports_function_calling(self) -> bool:
        """Both wire formats carry tools."""
        return True

    @property
    def supported_params(self) -> set[str]:
        """OpenAI-style options this LM forwards (the Anthropic wire format maps a subset)."""
        common = {"temperature", "max_tokens", "top_p", "stop", "tools", "tool_choice", "n"}
        if self.wire == "anthropic":
            return common | {"top_k", "metadata", "thinking"}
        return common | {"seed", "response_format", "frequency_penalty", "presence_penalty", "logprobs",
                         "parallel_tool_calls"}

    @property
    def plugin_manager(self) -> PluginManager:
        """The plugin manager whose ``dspyo3_lm_call`` hook this LM calls."""
        return plugin_manager_for(self)

    def dump_state(self) -> dict[str, Any]:
        """Reconstruction state without the key (it comes back from the environment or ``api_key=``)."""
        state: dict[str, Any] = super().dump_state()
        state.update(api_base=self.api_base, wire=self.wire, timeout=self.timeout,
                     connect_timeout=self.connect_timeout, http2=self.http2)
        if self.use_developer_role:
            state["use_developer_role"] = True
        if _is_openai_reasoning_model(self.model) and "max_completion_tokens" in state:
            state["max_tokens"] = state.pop("max_completion_tokens")
        if self.max_event_bytes != MAX_EVENT_BYTES:
            state["max_event_bytes"] = self.max_event_bytes
        if self.max_response_bytes != MAX_RESPONSE_BYTES:
            state["max_response_bytes"] = self.max_response_bytes
        if self.ca_cert is not None:
            state["ca_cert"] = self.ca_cert
        state.pop("model_type", None)
        public = self._public_headers()
        if public:
            state["headers"] = [list(pair) for pair in public]
        if self.pricing is not None:
            state["pricing"] = dict(self.pricing)
        return state

    def __getstate__(self) -> dict[str, Any]:
        # Pickles (saved programs) carry no secret: not the Rust client, not the key, not secret headers. Unpickling
        # takes the key from the provider's environment variable again.
        state = dict(self.__dict__)
        state.pop("_transport", None)
        state["_api_key"] = None
        state["headers"] = self._public_headers()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = {"max_event_bytes": MAX_EVENT_BYTES, "max_response_bytes": MAX_RESPONSE_BYTES,
                 "use_developer_role": False, **state}
        self.__dict__.update(state)
        self._max_tokens_field = max_tokens_field(self.provider, self.wire)
        if self._api_key is None and self._key_env:
            self._api_key = os.environ.get(self._key_env)
        self._transport = self._build_transport()

    def __copy__(self) -> NativeLM:
        # in-process copies share the Rust client (its pool) and keep the key
        copied = object.__new__(type(self))
        copied.__dict__.update(self.__dict__)
        return copied

    def __deepcopy__(self, memo: dict[int, Any]) -> NativeLM:
        copied: NativeLM = self.copy()
        memo[id(self)] = copied
        return copied

    def copy(self, **kwargs: Any) -> NativeLM:
        """A copy (``dspy.BaseLM.copy`` semantics) sharing this LM's Rust client, or with a new client when
        ``api_key``, ``api_base``, ``timeout``, ``connect_timeout``, ``num_retries``, ``http2``, ``headers``,
        ``ca_cert``, ``max_event_bytes`` or ``max_response_bytes`` change (``base_url`` / ``extra_headers`` are
        read as ``api_base`` / ``headers``). The model and wire format stay: build a new NativeLM for another
        model."""
        if "model" in kwargs or "wire" in kwargs:
            raise TypeError("a copy keeps its model and wire format; build a new NativeLM for another model")
        if "base_url" in kwargs:
            kwargs["api_base"] = kwargs.pop("base_url")
        if "extra_headers" in kwargs:
            kwargs["headers"] = kwargs.pop("extra_headers")
        if "headers" in kwargs:
            kwargs["headers"] = header_pairs(kwargs["headers"])
        for name in ("api_base", "timeout", "connect_timeout", "num_retries", "max_event_bytes",
                     "max_response_bytes"):
            if name in kwargs and kwargs[name] is None:
                raise ValueError(f"copy({name}=None): a NativeLM needs a {name}; pass a value")
        if _is_openai_reasoning_model(self.model):
            # the same rules as at construction; a new cap replaces max_completion_tokens (not shadowed by it)
            if "max_tokens" in kwargs:
                kwargs["max_completion_tokens"] = kwargs.pop("max_tokens")
            _check_reasoning(self, kwargs.get("temperature", self.kwargs.get("temperature")),
                             kwargs.get("max_completion_tokens", self.kwargs.get("max_completion_tokens")))
        api_key = kwargs.pop("api_key", None)
        copied: NativeLM = super().copy(**kwargs)
        if api_key is not None:
            copied._api_key = api_key
            register_secret(api_key)
        connection = {"api_base", "timeout", "connect_timeout", "num_retries", "http2", "headers", "ca_cert",
                      "max_event_bytes", "max_response_bytes"}
        if api_key is not None or connection.intersection(kwargs):
            copied._transport = copied._build_transport()
        return copied

    def __repr__(self) -> str:
        return f"NativeLM({self.model!r}, api_base={self.api_base!r}, wire={self.wire!r})"

    # -- calls -------------------------------------------------------------------------------------------------

    def _hooked(self) -> PluginManager | None:
        """The plugin manager, when an active plugin wraps ``dspyo3_lm_call`` (else calls skip the hook machinery)."""
        manager = self.plugin_manager
        return manager if wrappers_active(manager) else None

    @with_callbacks
    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        manager = self._hooked()
        if manager is not None:
            return manager.lm_call_hook(call=LMCall(self, prompt, messages, kwargs))
        return self._dspyo3_invoke(prompt, messages, kwargs)

    @with_callbacks
    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        manager = self._hooked()
        if manager is not None:
            import anyio.to_thread

            call = LMCall(lm=self, prompt=prompt, messages=messages, kwargs=kwargs, is_async=True)
            if wrappers_async_aware(manager):  # on the loop: the chain returns an awaitable of the outputs
                call.deferred = True
                return await manager.lm_call_hook(call=call)
            return await anyio.to_thread.run_sync(functools.partial(manager.hook.dspyo3_lm_call, call=call))
        return await self._dspyo3_ainvoke(prompt, messages, kwargs)

    def forward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        """The stored response record for one call (no cache, history or usage tracking)."""
        messages, params, _, n = self._prepare(prompt, messages, kwargs)
        return self._complete(messages, params, n)

    async def aforward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        """Async :meth:`forward`."""
        messages, params, _, n = self._prepare(prompt, messages, kwargs)
        return await self._acomplete(messages, params, n)

    def _prepare(self, prompt: Any, messages: Any, kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any],
                                                                                  dict[str, Any] | None, int]:
        if messages is None:
            if prompt is None:
                raise ValueError("pass messages=[...] or a prompt string")
            messages = [{"role": "user", "content": prompt}]
        per_lm = _PER_LM.intersection(kwargs)
        if per_lm:
            raise TypeError(f"NativeLM takes {sorted(per_lm)} when it is built, not per call; use "
                            f"lm.copy({sorted(per_lm)[0]}=...) for an LM with other connection settings")
        merged = {**self.kwargs, **kwargs}
        use_cache = merged.pop("cache", self.cache)
        if "rollout_id" in merged and not self._warned_zero_temp_rollout:
            self._warn_zero_temp_rollout(merged.get("temperature"), merged["rollout_id"])
        n = merged.get("n") or merged.get("num_generations") or 1
        params = {k: v for k, v in merged.items() if v is not None and k not in _DSPY_ONLY}
        field = self._max_tokens_field
        if field is not None:
            other = "max_tokens" if field == "max_completion_tokens" else "max_completion_tokens"
            if other in params:  # the provider's own name wins when both are given (as in dspy.LM)
                value = params.pop(other)
                params.setdefault(field, value)
        if self.wire == "anthropic":  # before the cache key: the key says what is sent
            anthropic_defaults(self.wire_model, params)
        key = None
        if use_cache:
            key = {"_fn_identifier": _CACHE_ID, "model": self.model, "api_base": self.api_base,
                   "messages": messages, "n": n, "rollout_id": merged.get("rollout_id"), **params}
        return messages, params, key, int(n)

    def _record(self, answer: tuple[Any, ...]) -> _Record:
        ident, model, choices, (prompt_tokens, completion_tokens, total_tokens) = answer[:4]  # 5th: attempts
        return _Record(
            id=ident, model=model or self.wire_model,
            choices=[{"content": c, "reasoning": r, "tool_calls": t, "finish_reason": f} for c, r, t, f in choices],
            usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                   "total_tokens": total_tokens},
        )

    def _merge(self, records: list[_Record]) -> _Record:
        if len(records) == 1:
            return records[0]
        usage = {k: sum(r["usage"][k] for r in records) for k in records[0]["usage"]}
        return _Record(id=records[0]["id"], model=records[0]["model"],
                       choices=[c for r in records for c in r["choices"]], usage=usage)

    def _send(self, transport: Any, messages: list[Any], params: dict[str, Any]) -> Any:
        """One request; inside a traced span it carries a ``traceparent`` and its attempts are recorded."""
        return traced(transport, functools.partial(transport.complete, self.wire_model, messages, params),
                       answer_attempts)

    async def _asend(self, transport: Any, messages: list[Any], params: dict[str, Any]) -> Any:
        """Async :meth:`_send`, through the loop's completion queue."""
        return await atraced(transport, functools.partial(submit, transport, self.wire_model, messages, params),
                              answer_attempts)

    def _complete(self, messages: list[Any], params: dict[str, Any], n: int) -> _Record:
        transport = self._transport
        try:
            if n > 1 and self.wire == "anthropic":  # no `n` in the messages API: one request per candidate
                return self._merge([self._record(self._send(transport, messages, params)) for _ in range(n)])
            if n > 1:
                params = {**params, "n": n}
            return self._record(self._send(transport, messages, params))
        except native_extension().LMTransportError as exc:
            raise _error(self, exc) from None

    async def _acomplete(self, messages: list[Any], params: dict[str, Any], n: int) -> _Record:
        transport = self._transport
        try:
            if n > 1 and self.wire == "anthropic":
                tasks = [asyncio.ensure_future(self._asend(transport, messages, params)) for _ in range(n)]
                try:
                    answers = await asyncio.gather(*tasks)
                except BaseException:
                    for task in tasks:
                        task.cancel()  # a failed candidate stops its siblings (no billed orphans)
                    raise
                return self._merge([self._record(a) for a in answers])
            if n > 1:
                params = {**params, "n": n}
            return self._record(await self._asend(transport, messages, params))
        except native_extension().LMTransportError as exc:
            raise _error(self, exc) from None

    def _cached(self, key: dict[str, Any] | None) -> _Record | None:
        if key is None:
            return None
        hit = dspy.cache.get(key)
        if hit is None:
            return None
        record = _Record(hit)
        record["cache_hit"] = True
        return record

    def _cost(self, record: Mapping[str, Any]) -> float | None:
        usage = record["usage"]
        if self.pricing is not None:
            return float(usage["prompt_tokens"] * self.pricing["input_per_mtok"]
                         + usage["completion_tokens"] * self.pricing["output_per_mtok"]) / 1e6
        return PRICING.cost(str(self.model), int(usage["prompt_tokens"]), int(usage["completion_tokens"]))

    def _finish(self, record: _Record, key: dict[str, Any] | None, prompt: Any, messages: Any,
                kwargs: dict[str, Any]) -> list[Any]:
        hit = record.get("cache_hit", False)
        if not hit:
            record["cost"] = self._cost(record)
            if key is not None:
                dspy.cache.put(key, dict(record))
            if settings.usage_tracker:
                settings.usage_tracker.add_usage(self.model, dict(record["usage"]))
        outputs = _outputs(record)
        billed, cost = ({}, None) if hit else (dict(record["usage"]), record.get("cost"))  # a hit bills nothing
        source = "lm" if self.pricing is not None else "pricing"
        if _NOTE_DETAILS:
            finish = [c.get("finish_reason") for c in record.get("choices") or ()]
            note_result(self, billed, cost, bool(hit), source,  # type: ignore[call-arg,unused-ignore]
                        finish_reasons=[f for f in finish if isinstance(f, str)] or None,
                        response_model=record.get("model"), response_id=record.get("id"))
        else:
            note_result(self, billed, cost, bool(hit), source)
        if not settings.disable_history:
            self.update_history({
                "prompt": prompt, "messages": messages,
                "kwargs": {k: v for k, v in kwargs.items() if not k.startswith("api_")},
                "response": record, "outputs": outputs,
                "usage": billed, "cost": cost,
                "timestamp": datetime.datetime.now().isoformat(), "uuid": str(uuid.uuid4()),
                "model": self.model, "response_model": record["model"], "model_type": self.model_type,
            })
        return outputs

    def _dspyo3_invoke(self, prompt: Any, messages: Any, kwargs: dict[str, Any]) -> list[Any]:
        """One call: cache, request (or stream to ``dspy.streamify``), usage, history. The hook chain's innermost
        step for this LM."""
        msgs, params, key, n = self._prepare(prompt, messages, kwargs)
        record = self._cached(key)
        if record is None:
            if settings.send_stream is not None and n == 1:
                record = self._stream_sync(msgs, params)
            else:
                record = self._complete(msgs, params, n)
        return self._finish(record, key, prompt, msgs, kwargs)

    async def _dspyo3_ainvoke(self, prompt: Any, messages: Any, kwargs: dict[str, Any]) -> list[Any]:
        msgs, params, key, n = self._prepare(prompt, messages, kwargs)
        record = self._cached(key)
        if record is None:
            if settings.send_stream is not None and n == 1:
                record = await self._stream_async(msgs, params)
            else:
                record = await self._acomplete(msgs, params, n)
        return self._finish(record, key, prompt, msgs, kwargs)

    # -- streaming ---------------------------------------------------------------------------------------------

    def _open_stream(self, messages: list[Any], params: dict[str, Any]) -> Any:
        """Open a stream; inside a traced span it carries a ``traceparent`` and its opening attempts are recorded."""
        transport = self._transport
        return traced(transport, functools.partial(transport.stream, self.wire_model, messages, params),
                       stream_attempts)

    async def _aopen_stream(self, messages: list[Any], params: dict[str, Any]) -> Any:
        """Async :meth:`_open_stream`."""
        transport = self._transport
        return await atraced(transport, functools.partial(transport.astream, self.wire_model, messages, params),
                              stream_attempts)

    def _stream_sync(self, messages: list[Any], params: dict[str, Any]) -> _Record:
        import anyio.from_thread

        stream = settings.send_stream
        assembly = _Assembly(self, settings.caller_predict)
        try:
            events = self._open_stream(messages, params)
            try:
                for event in events:
                    chunk = assembly.push(event)
                    if chunk is not None:
                        _emitted()
                        anyio.from_thread.run(stream.send, chunk)
            finally:
                events.close()
        except native_extension().LMTransportError as exc:
            raise _error(self, exc) from None
        return assembly.record()

    async def _stream_async(self, messages: list[Any], params: dict[str, Any]) -> _Record:
        stream = settings.send_stream
        assembly = _Assembly(self, settings.caller_predict)
        try:
            events = await self._aopen_stream(messages, params)
            try:
                async for event in events:
                    chunk = assembly.push(event)
                    if chunk is not None:
                        _emitted()
                        await stream.send(chunk)
            finally:
                events.close()
        except native_extension().LMTransportError as exc:
            raise _error(self, exc) from None
        return assembly.record()


def _emitted() -> None:
    from dspy.clients.call_context import stream_emitted

    stream_emitted()


class _Assembly:
    """Stream events -> listener chunks (the shape ``dspy.streamify`` consumes) and the final record."""

    def __init__(self, lm: NativeLM, caller_predict: Any) -> None:
        self.lm = lm
        self.predict_id = id(caller_predict) if caller_predict is not None else None
        self.id: str | None = None
        self.model = lm.wire_model
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.tools: dict[int, dict[str, Any]] = {}
        self.finish: str | None = None
        self.usage = (0, 0, 0)

    def push(self, event: tuple[Any, ...]) -> Any:
        from dspy.clients.call_result import attributes
        from dspy.clients.engines.streaming import EngineChunk

        kind = event[0]
        delta: dict[str, Any] = {}
        finish = None
        if kind == "start":
            self.id = event[1]
            self.model = event[2] or self.model
            return None
        if kind == "text":
            self.text.append(event[1])
            delta["content"] = event[1]
        elif kind == "reasoning":
            self.reasoning.append(event[1])
            delta["reasoning_content"] = event[1]
        elif kind == "tool_call":
            _, index, ident, name, arguments = event
            call = self.tools.setdefault(index, {"id": ident, "type": "function",
                                                 "function": {"name": name, "arguments": ""}})
            call["function"]["arguments"] += arguments
            function = {"arguments": arguments, **({"name": name} if name is not None else {})}
            delta["tool_calls"] = [{"index": index, "type": "function", "function": function,
                                    **({"id": ident} if ident is not None else {})}]
        elif kind == "end":
            self.finish, self.usage = event[1], tuple(event[2])
            finish = self.finish
        delta.setdefault("content", None)
        return EngineChunk(id=self.id, model=self.model, predict_id=self.predict_id,
                           choices=[attributes({"index": 0, "delta": delta, "finish_reason": finish})])

    def record(self) -> _Record:
        for call in self.tools.values():
            call["function"]["arguments"] = call["function"]["arguments"] or "{}"  # a call with no input
        calls = [self.tools[i] for i in sorted(self.tools)] or None
        content = "".join(self.text) if self.text or not calls else None
        return self.lm._record((self.id, self.model, [(content, "".join(self.reasoning) or None, calls, self.finish)],
                                self.usage))

