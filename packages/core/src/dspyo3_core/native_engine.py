"""The Rust HTTP client as a DSPy engine: ``dspy.LM(model, engine=..., async_engine=...)``.

DSPy 3.4 runs every LM attempt through an *engine* (``complete(Request) -> Response``, ``stream(Request)``, and an
async twin); its LM layer keeps the cache, retries, usage, history, callbacks and streaming listeners. These engines
send the attempt through ``dspyo3_native.LMTransport``: the JSON body is built, posted (pooled HTTP/1.1 or HTTP/2,
TLS) and the answer parsed on tokio with the GIL released, instead of in DSPy's Python HTTP client or LiteLLM. So a
program keeps a plain ``dspy.LM`` (and :class:`~dspyo3_core.lm.HookedLM`, and the production stack around it) and
only the wire work moves to Rust::

    from dspyo3_core.native_engine import native_lm
    lm = native_lm("openai/gpt-4o-mini")                                     # key from OPENAI_API_KEY
    lm = native_lm("openai/qwen", api_base="http://127.0.0.1:8000/v1", api_key="EMPTY", temperature=0.0)

    engine, async_engine = native_engines("openai/qwen", api_base=..., api_key=...)
    lm = dspy.LM("openai/qwen", engine=engine, async_engine=async_engine)   # the same, by hand

What the native path carries: a one-part system prompt, user, assistant and developer text messages (a developer
message goes as a system one, as DSPy's lm15 engine sends it), ``max_tokens`` (sent under the provider's name for
it, as :class:`~dspyo3_core.native_lm.NativeLM` does), ``temperature``, ``top_p``, ``stop``, ``seed`` and the two
penalties (OpenAI wire only), ``response_format`` (JSON object or JSON schema, OpenAI wire), provider extensions,
and streaming (text and reasoning deltas). A request with anything else (tools, images or other media parts, tool
results, reasoning settings, logprobs, ...) goes through DSPy's own lm15 engine with the same key and endpoint,
logged once per feature at WARNING on ``dspyo3.native_engine`` and counted in :attr:`NativeEngine.fallbacks`: never
sent half-translated; and where lm15 could not send it alike (``headers``, ``ca_cert`` or ``http2`` on the engine,
or no lm15 route for the model) the call fails with lm15's ``UnsupportedFeatureError`` saying so. The engines make
one attempt each (DSPy retries, as its engine contract says); inside a traced span each request carries a W3C
``traceparent`` and its HTTP attempt is recorded as a CLIENT span.

A saved file is data and never chooses where requests go or which key they carry: an engine on its own
``api_base`` refuses to be saved (set the LM again after loading); one on its provider's default endpoint saves its
model, wire format, timeouts and limits, never the key or headers.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from dspyo3_core.native_lm import (
    MAX_EVENT_BYTES,
    MAX_RESPONSE_BYTES,
    PROVIDERS,
    answer_attempts,
    anthropic_defaults,
    atraced,
    byte_limit,
    header_pairs,
    max_tokens_field,
    native_extension,
    route,
    stream_attempts,
    submit,
    traced,
)
from dspyo3_core.secrets import register_secret, secret_values
from dspyo3_core.spans import server_of

__all__ = ["CONNECTION_SETTINGS", "AsyncNativeEngine", "NativeEngine", "native_engines", "native_lm"]

logger = logging.getLogger("dspyo3.native_engine")

# Config fields the native path sends under the same name (OpenAI chat completions; the Rust client maps them
# for Anthropic's messages API)
_SAME_NAME = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty")
# sent on the OpenAI wire only (Anthropic's messages API has no such option)
_OPENAI_ONLY = frozenset({"seed", "frequency_penalty", "presence_penalty"})
# Config fields with no native mapping: a request setting any of them goes through DSPy's lm15 engine
_FALLBACK_FIELDS = ("top_k", "tool_choice", "reasoning", "cache", "service_tier", "user_id", "store", "logprobs",
                    "probabilities")
_FINISH = {"stop": "stop", "end_turn": "stop", "stop_sequence": "stop", "length": "length", "max_tokens": "length",
           "tool_calls": "tool_call", "tool_call": "tool_call", "tool_use": "tool_call", "function_call": "tool_call",
           "content_filter": "content_filter", "refusal": "content_filter", "error": "error"}


class Unsupported(Exception):
    """A request the native path does not carry; its text names the feature."""


def _finish(reason: Any) -> str:
    return _FINISH.get(reason, "stop") if isinstance(reason, str) else "stop"


def _text(parts: Any, where: str) -> str | list[dict[str, str]]:
    """Text parts as chat ``content``: one part as a string, several as a list of text blocks."""
    texts = []
    for part in parts:
        if getattr(part, "type", None) != "text" or getattr(part, "continuation", ()):
            raise Unsupported(f"{getattr(part, 'type', type(part).__name__)} parts in {where}")
        texts.append(part.text)
    if len(texts) == 1:
        return str(texts[0])
    return [{"type": "text", "text": str(t)} for t in texts]


def _wire_messages(request: Any, wire: str) -> list[dict[str, Any]]:
    """The request's conversation as chat-completions messages (what ``LMTransport`` takes for both wires)."""
    out: list[dict[str, Any]] = []
    system = request.system
    if system is not None:
        content = system if isinstance(system, str) else _text(system, "system")
        if not isinstance(content, str):
            raise Unsupported("a system prompt of several parts")
        out.append({"role": "system", "content": content})
    for message in request.messages:
        role = message.role
        if role not in ("user", "assistant", "developer") or (role == "developer" and wire != "openai"):
            raise Unsupported(f"{role} messages")
        if message.continuation:
            raise Unsupported("continuation state")
        # chat completions as DSPy's lm15 engine sends them: a developer message goes as a system one
        out.append({"role": "system" if role == "developer" else role,
                    "content": _text(message.parts, f"{role} messages")})
    return out


def _response_format(value: Mapping[str, Any]) -> dict[str, Any]:
    """lm15's canonical ``response_format`` as chat completions spell it."""
    if value.get("type") == "json_object":
        return {"type": "json_object"}
    if value.get("type") == "json_schema" and "schema" in value:
        inner: dict[str, Any] = {"name": value.get("name") or "response", "schema": value["schema"]}
        if "strict" in value:
            inner["strict"] = value["strict"]
        return {"type": "json_schema", "json_schema": inner}
    raise Unsupported(f"response_format {value.get('type')!r}")


class _Endpoint:
    """What both engines share: one ``LMTransport`` (its pool serves sync and async calls alike), the request
    translation and DSPy's lm15 engine for the requests the native path does not carry."""

    def __init__(self, model: str, *, api_base: str | None, api_key: str | None, wire: str | None,
                 timeout: float | None,
                 connect_timeout: float, http2: bool, headers: Any, ca_cert: str | os.PathLike[str] | None,
                 max_event_bytes: int, max_response_bytes: int) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ValueError("native engine: model must be a 'provider/model' string, e.g. 'openai/gpt-4o-mini'")
        found = route(model, api_base, wire, f"native engine for {model!r}")
        self.model, self.provider, self.wire_model = model, found.provider, found.wire_model
        self.wire, self.api_base = found.wire, found.api_base
        if self.wire not in ("openai", "anthropic"):
            raise ValueError(f"native engine: wire={self.wire!r}; use 'openai' or 'anthropic'")
        server = server_of(self.api_base)
        self.host = f"{server[0]}:{server[1]}" if server else "?"  # for messages: never credentials or a path
        self.custom_endpoint = api_base is not None and api_base.rstrip("/") != (found.default_base or "").rstrip("/")
        self.timeout = 600.0 if timeout is None else float(timeout)  # None: the default, as dspy.LM reads it
        self.connect_timeout, self.http2 = float(connect_timeout), bool(http2)
        self.max_event_bytes, self.max_response_bytes = max_event_bytes, max_response_bytes
        self.headers = header_pairs(headers)
        self.ca_cert = os.fspath(ca_cert) if ca_cert is not None else None
        self._api_key = found.key(api_key)
        register_secret(self._api_key, *secret_values({"headers": self.headers}))
        self._max_tokens = max_tokens_field(self.provider, self.wire) or "max_tokens"
        self.transport = native_extension().LMTransport(
            self.api_base, api_key=self._api_key, wire=self.wire, timeout=self.timeout,
            connect_timeout=self.connect_timeout, max_retries=0, http2=self.http2, headers=self.headers or None,
            ca_cert=self.ca_cert,
            max_event_bytes=byte_limit("max_event_bytes", max_event_bytes),
            max_response_bytes=byte_limit("max_response_bytes", max_response_bytes))
        self.fallbacks = 0
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._fallback: dict[Any, Any] = {}
        self._async_fallbacks: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()  # per event loop

    @functools.cached_property
    def capabilities(self) -> Any:
        """What DSPy's own engine would declare for this model (adapters read it: structured outputs, native
        tools): requests using a feature the native path lacks take the lm15 route, so the declaration holds."""
        import dspy
        from dspy.clients.capabilities import Capabilities, capabilities

        try:
            return capabilities(dspy.LM(self.model, model_type="chat"))
        except Exception:  # a model DSPy knows nothing of: its own rule, unknown is unsupported
            return Capabilities()

    def wire_request(self, request: Any) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
        """``(model, messages, params)`` for ``LMTransport``; raises :class:`Unsupported`."""
        if request.tools:
            raise Unsupported("tools")
        config = request.config
        for name in _FALLBACK_FIELDS:
            if getattr(config, name, None) is not None:
                raise Unsupported(name)
        params: dict[str, Any] = {}
        if config.max_tokens is not None:
            params[self._max_tokens] = config.max_tokens
        for name in _SAME_NAME:
            value = getattr(config, name)
            if value is not None:
                if self.wire == "anthropic" and name in _OPENAI_ONLY:
                    raise Unsupported(f"{name} on the anthropic wire")
                params[name] = value
        if config.stop:
            params["stop"] = list(config.stop)
        if config.response_format is not None:
            if self.wire != "openai":
                raise Unsupported("response_format on the anthropic wire")
            params["response_format"] = _response_format(config.response_format)
        if config.extensions:
            params.update(config.extensions)
        if self.wire == "anthropic":
            anthropic_defaults(request.model, params)
        model = request.model
        if model == self.model:
            model = self.wire_model
        elif model.partition("/")[0] in PROVIDERS:
            model = model.partition("/")[2]
        return model, _wire_messages(request, self.wire), params

    def fallback(self, request: Any, reason: Unsupported, asynchronous: bool) -> Any:
        """DSPy's lm15 engine for a request the native path does not carry: built once (the async one once per
        event loop, as its connection pool belongs to one loop). Raises lm15's ``UnsupportedFeatureError`` naming
        the fix when lm15 cannot send it the way this engine would (headers, a private CA, h2c, no lm15 route)."""
        from dspy import lm15

        feature = str(reason)
        lost = [name for name, value in (("headers", self.headers), ("ca_cert", self.ca_cert),
                                         ("http2", self.http2)) if value]
        if lost:
            raise lm15.UnsupportedFeatureError(
                f"native engine: {feature} is not carried by the Rust transport, and DSPy's lm15 engine cannot send "
                f"this request with the engine's {' / '.join(lost)}; remove {feature} from the call, or use a "
                "dspy.LM on DSPy's own engine (transport = \"litellm\") for it", feature=feature)
        key: Any = asyncio.get_running_loop() if asynchronous else None
        with self._lock:
            self.fallbacks += 1
            if feature not in self._warned:
                self._warned.add(feature)
                logger.warning("native engine: %s not carried by the Rust transport; requests using it go through "
                               "DSPy's lm15 engine", feature)
            engines = self._async_fallbacks if asynchronous else self._fallback
            if asynchronous:  # an lm15 engine holds its loop, so the weak keys never drop: forget closed loops
                for closed in [loop for loop in engines if loop.is_closed()]:
                    del engines[closed]
            engine = engines.get(key)
            if engine is None:
                from dspy.clients.engines.lm15_engine import AsyncLM15Engine, LM15Engine, timeouts_for

                try:
                    name = LM15Engine(lm15.RouterConfig(env={})).resolve(self.model).provider
                except lm15.LM15Error as exc:
                    raise lm15.UnsupportedFeatureError(
                        f"native engine: {feature} is not carried by the Rust transport, and DSPy's lm15 engine has "
                        f"no route for {self.model!r} ({exc.message or exc}); remove {feature} from the call, or "
                        "use a dspy.LM on DSPy's own engine for it", feature=feature) from None
                config = lm15.RouterConfig(api_keys={name: self._api_key} if self._api_key else None,
                                           base_urls={name: self.api_base}, timeouts=timeouts_for(self.timeout))
                engine = engines[key] = (AsyncLM15Engine if asynchronous else LM15Engine)(config)
        return engine

    def response(self, answer: tuple[Any, ...]) -> Any:
        """The transport's answer as an lm15 ``Response``."""
        from dspy.lm15 import Message, Response, TextPart, ThinkingPart, ToolCallPart, Usage

        ident, model, choices, (prompt, completion, total) = answer[:4]
        content, reasoning, tool_calls, finish = choices[0]
        parts: list[Any] = []
        if reasoning:
            parts.append(ThinkingPart(reasoning))
        if content or not (parts or tool_calls):
            parts.append(TextPart(content or ""))
        for index, call in enumerate(tool_calls or ()):
            function = call.get("function") or {}
            arguments = function.get("arguments")
            try:
                data = json.loads(arguments) if isinstance(arguments, str) and arguments else (arguments or {})
            except ValueError:
                data = {"_raw": arguments}
            parts.append(ToolCallPart(id=str(call.get("id") or f"call_{index}"), name=str(function.get("name") or ""),
                                      input=data if isinstance(data, dict) else {"value": data}))
        return Response(id=ident or None, model=model or self.wire_model, message=Message.assistant(parts),
                        finish_reason=_finish(finish),
                        usage=Usage(input_tokens=prompt, output_tokens=completion, total_tokens=total))

    def error(self, exc: BaseException) -> Exception:
        """``dspyo3_native.LMTransportError`` -> the lm15 error DSPy's LM layer maps and retries."""
        from dspy import lm15

        message, kind, status, retry_after = (list(exc.args) + [None] * 4)[:4]
        meta: dict[str, Any] = {"provider": self.provider, "status": status}
        classes: dict[str, Any] = {
            "rate_limit": lm15.RateLimitError, "auth": lm15.AuthError, "invalid_request": lm15.InvalidRequestError,
            "context_length": lm15.ContextLengthError, "server": lm15.ServerError, "timeout": lm15.TimeoutError,
        }
        text = str(message)
        error: Exception
        if kind in ("rate_limit", "server"):
            error = classes[kind](text, retry_after=retry_after, **meta)
        elif kind in classes:
            error = classes[kind](text, **meta)
        elif kind == "too_large":  # the same request would get the same answer: not retried
            error = lm15.CollectionLimitError(text, code="response_too_large", provider=self.provider)
        elif kind == "connect":
            error = lm15.TransportError(text)
        elif kind == "config":
            error = lm15.ConfigurationError(text)
        else:  # protocol: a 200 whose body is not an answer (or a stream that broke off)
            error = lm15.ProviderError(text, code="malformed_response", **{**meta, "status": status or 200})
        return error

    def events(self, event: tuple[Any, ...], state: dict[str, int]) -> Any:
        """One transport stream event as an lm15 stream event (None for none)."""
        from dspy import lm15

        kind = event[0]
        if kind == "start":
            return lm15.StreamStartEvent(id=event[1] or None, model=event[2] or self.wire_model)
        if kind == "reasoning":
            state.setdefault("thinking", len(state))
            return lm15.StreamDeltaEvent(lm15.ThinkingDelta(event[1], part_index=state["thinking"]))
        if kind == "text":
            state.setdefault("text", len(state))
            return lm15.StreamDeltaEvent(lm15.TextDelta(event[1], part_index=state["text"]))
        if kind == "tool_call":
            _, index, ident, name, arguments = event
            key = f"tool{index}"
            state.setdefault(key, len(state))
            return lm15.StreamDeltaEvent(lm15.ToolCallDelta(arguments or "", part_index=state[key], id=ident or None,
                                                            name=name or None))
        if kind == "end":
            _, finish, (prompt, completion, total) = event
            return lm15.StreamEndEvent(finish_reason=_finish(finish), usage=lm15.Usage(
                input_tokens=prompt, output_tokens=completion, total_tokens=total))
        return None


class _Engine:
    """What both engines share: their endpoint, the capability hints DSPy reads from a custom engine (see
    ``dspy.clients.capabilities``) and saving."""

    _endpoint: _Endpoint

    @classmethod
    def _sharing(cls, endpoint: _Endpoint) -> Any:
        engine = cls.__new__(cls)
        engine._endpoint = endpoint
        return engine

    @property
    def url(self) -> str:
        """The chat endpoint requests go to."""
        return str(self._endpoint.transport.url)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self  # a live connection pool, shared like DSPy shares its own engines between LM copies

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(f"{type(self).__name__} holds a live connection pool and its key, and is not pickled: "
                        "build the LM again in the other process (dspyo3_core.native_engine.native_lm)")

    @property
    def fallbacks(self) -> int:
        """Requests sent through DSPy's lm15 engine instead (features the native path does not carry)."""
        return self._endpoint.fallbacks

    @property
    def supports_function_calling(self) -> bool:
        """Native tool calls (sent through DSPy's lm15 engine)."""
        return bool(self._endpoint.capabilities.function_calling)

    @property
    def supports_reasoning(self) -> bool:
        """Reasoning settings (sent through DSPy's lm15 engine)."""
        return bool(self._endpoint.capabilities.reasoning)

    @property
    def supports_response_schema(self) -> bool:
        """Structured outputs (``response_format`` with a JSON schema)."""
        return bool(self._endpoint.capabilities.response_schema)

    @property
    def supported_params(self) -> frozenset[str]:
        """The request parameters the model takes."""
        return frozenset(self._endpoint.capabilities.params)

    def dump_state(self) -> dict[str, Any]:
        """What a saved program keeps of this engine: the model, wire format, timeouts and size limits. Never the
        key, the headers or the endpoint: a file does not choose where requests go, so an engine on its own
        ``api_base`` raises ``TypeError`` (DSPy then refuses to save the LM with the program)."""
        e = self._endpoint
        if e.custom_endpoint:
            raise TypeError(f"this LM's engine sends requests to its own api_base ({e.host}), which a saved file "
                            "does not choose: save the program without this LM and set it again after loading")
        return {"model": e.model, "wire": e.wire, "endpoint": "default",
                "timeout": e.timeout, "connect_timeout": e.connect_timeout, "http2": e.http2,
                "max_event_bytes": e.max_event_bytes, "max_response_bytes": e.max_response_bytes}

    @classmethod
    def load_state(cls, state: Mapping[str, Any]) -> Any:
        """The engine a saved program described (DSPy calls this only for files loaded with
        ``allow_custom_lm_class=True``): the provider's default endpoint, the key from its environment variable. An
        engine that sent requests to its own ``api_base`` is not restored: a file does not choose an endpoint."""
        if not isinstance(state, Mapping) or not isinstance(state.get("model"), str):
            raise ValueError("saved native engine state must be a mapping with a 'model' string")
        if state.get("endpoint") != "default":
            raise ValueError(
                f"the saved LM {state['model']!r} sent requests to its own api_base, which a saved file does not "
                "choose; load the program without it and set the LM again (native_lm(model, api_base=...))")
        known: dict[str, Any] = {"wire": str, "timeout": (int, float), "connect_timeout": (int, float), "http2": bool,
                                 "max_event_bytes": int, "max_response_bytes": int}
        options: dict[str, Any] = {}
        for name, kind in known.items():
            if name in state:
                if not isinstance(state[name], kind) or (kind is not bool and isinstance(state[name], bool)):
                    raise ValueError(f"saved native engine state: {name} = {state[name]!r} has the wrong type")
                options[name] = state[name]
        engine = cls(state["model"], **options)  # type: ignore[call-arg]  # NativeEngine or AsyncNativeEngine
        # DSPy loads an LM's sync engine, then its async one: the second finds the first's endpoint here and shares
        # its connection pool, as the pair native_engines() builds does
        key = (state["model"], tuple(sorted(options.items())), engine._endpoint._api_key)
        with _LOADED_LOCK:
            shared = _LOADED.get(key)
            if shared is None:
                _LOADED[key] = engine._endpoint
            else:
                engine._endpoint = shared
        return engine


_LOADED: weakref.WeakValueDictionary[tuple[Any, ...], _Endpoint] = weakref.WeakValueDictionary()
_LOADED_LOCK = threading.Lock()


class NativeEngine(_Engine):
    """DSPy's sync engine over ``dspyo3_native.LMTransport`` (see the module docstring).

    Args:
        model: the LM's ``provider/model`` (``openai/...``, ``anthropic/...``, ``hosted_vllm/...``, ...; with
            ``api_base``, any served model name); picks the wire format, default endpoint and key variable.
        api_base: the endpoint base URL (``.../v1``); defaults per provider.
        api_key: the key; defaults to the provider's environment variable. Never shown or saved.
        wire: ``"openai"`` or ``"anthropic"``; inferred from the provider.
        timeout: seconds for one attempt's whole answer; ``connect_timeout`` for a new connection.
        http2: speak HTTP/2 without TLS to servers that need it (over https it is negotiated).
        headers: extra request headers (secret ones are registered and masked everywhere).
        ca_cert: a PEM file of CA certificates trusted besides the Mozilla roots.
        max_event_bytes, max_response_bytes: the largest stream event and answer accepted.
    """

    def __init__(self, model: str, *, api_base: str | None = None, api_key: str | None = None,
                 wire: str | None = None, timeout: float | None = 600.0, connect_timeout: float = 10.0,
                 http2: bool = False,
                 headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
                 ca_cert: str | os.PathLike[str] | None = None, max_event_bytes: int = MAX_EVENT_BYTES,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self._endpoint = _Endpoint(model, api_base=api_base, api_key=api_key, wire=wire, timeout=timeout,
                                   connect_timeout=connect_timeout, http2=http2, headers=headers, ca_cert=ca_cert,
                                   max_event_bytes=max_event_bytes, max_response_bytes=max_response_bytes)

    def complete(self, request: Any) -> Any:
        """One attempt: ``Request`` -> ``Response`` (lm15 errors on failure)."""
        endpoint = self._endpoint
        try:
            model, messages, params = endpoint.wire_request(request)
        except Unsupported as reason:
            return endpoint.fallback(request, reason, False).complete(request)
        transport = endpoint.transport
        try:
            answer = traced(transport, functools.partial(transport.complete, model, messages, params),
                            answer_attempts)
        except native_extension().LMTransportError as exc:
            raise endpoint.error(exc) from None
        return endpoint.response(answer)

    def stream(self, request: Any) -> Iterator[Any]:
        """One streamed attempt: lm15 stream events, ``start`` first and ``end`` last."""
        endpoint = self._endpoint
        try:
            model, messages, params = endpoint.wire_request(request)
        except Unsupported as reason:
            yield from endpoint.fallback(request, reason, False).stream(request)
            return
        transport = endpoint.transport
        error = native_extension().LMTransportError
        try:
            events = traced(transport, functools.partial(transport.stream, model, messages, params),
                            stream_attempts)
        except error as exc:
            raise endpoint.error(exc) from None
        state: dict[str, int] = {}
        try:
            for event in events:
                out = endpoint.events(event, state)
                if out is not None:
                    yield out
        except error as exc:
            raise endpoint.error(exc) from None
        finally:
            events.close()

    def close(self) -> None:
        """Close the lm15 engine built for requests the native path does not carry, if any (the Rust pool closes with
        the last engine holding it). The engine stays usable: a later such request builds a new one."""
        endpoint = self._endpoint
        with endpoint._lock:
            engines = list(endpoint._fallback.values())
            endpoint._fallback.clear()
        for engine in engines:
            engine.close()

    def __repr__(self) -> str:
        return f"NativeEngine({self._endpoint.model!r}, host={self._endpoint.host!r})"


class AsyncNativeEngine(_Engine):
    """DSPy's async engine over the same Rust client (see :class:`NativeEngine` for the arguments). Requests are
    awaited through the loop's completion queue: no thread per call, and cancelling the task drops the request."""

    def __init__(self, model: str, **kwargs: Any) -> None:
        self._endpoint = NativeEngine(model, **kwargs)._endpoint

    async def complete(self, request: Any) -> Any:
        """One attempt, awaited."""
        endpoint = self._endpoint
        try:
            model, messages, params = endpoint.wire_request(request)
        except Unsupported as reason:
            return await endpoint.fallback(request, reason, True).complete(request)
        transport = endpoint.transport
        try:
            answer = await atraced(transport, functools.partial(submit, transport, model, messages, params),
                                   answer_attempts)
        except native_extension().LMTransportError as exc:
            raise endpoint.error(exc) from None
        return endpoint.response(answer)

    async def stream(self, request: Any) -> AsyncIterator[Any]:
        """One streamed attempt, as an async iterator of lm15 stream events."""
        endpoint = self._endpoint
        try:
            model, messages, params = endpoint.wire_request(request)
        except Unsupported as reason:
            async for event in endpoint.fallback(request, reason, True).stream(request):
                yield event
            return
        transport = endpoint.transport
        error = native_extension().LMTransportError
        try:
            events = await atraced(transport, functools.partial(transport.astream, model, messages, params),
                                   stream_attempts)
        except error as exc:
            raise endpoint.error(exc) from None
        state: dict[str, int] = {}
        try:
            async for event in events:
                out = endpoint.events(event, state)
                if out is not None:
                    yield out
        except error as exc:
            raise endpoint.error(exc) from None
        finally:
            events.close()

    async def aclose(self) -> None:
        """Close the lm15 engine built on this event loop for requests the native path does not carry, if any (see
        :meth:`NativeEngine.close`)."""
        endpoint = self._endpoint
        with endpoint._lock:
            engine = endpoint._async_fallbacks.pop(asyncio.get_running_loop(), None)
        if engine is not None:
            await engine.aclose()

    def __repr__(self) -> str:
        return f"AsyncNativeEngine({self._endpoint.model!r}, host={self._endpoint.host!r})"


def native_engines(model: str, **kwargs: Any) -> tuple[NativeEngine, AsyncNativeEngine]:
    """A sync and an async engine sharing one Rust client (one connection pool); ``kwargs`` as
    :class:`NativeEngine`'s."""
    engine = NativeEngine(model, **kwargs)
    return engine, AsyncNativeEngine._sharing(engine._endpoint)


CONNECTION_SETTINGS = frozenset({"api_base", "base_url", "api_key", "wire", "timeout", "connect_timeout", "http2",
                                 "headers", "extra_headers", "ca_cert", "max_event_bytes", "max_response_bytes"})
"""The keyword arguments :func:`native_lm` gives the engines rather than the LM."""


def native_lm(model: str, *, lm_class: Any = None, **kwargs: Any) -> Any:
    """A ``dspy.LM`` (or ``lm_class``, e.g. :class:`~dspyo3_core.lm.HookedLM`) whose engines are the native ones:
    connection settings (``api_base``/``base_url``, ``api_key``, ``headers``/``extra_headers``, ``timeout``, ...) go
    to the engines, everything else (``temperature``, ``max_tokens``, ``cache``, ``num_retries``, ...) to the LM."""
    import dspy

    connection = {k: kwargs.pop(k) for k in CONNECTION_SETTINGS if k in kwargs}
    for alias, name in (("base_url", "api_base"), ("extra_headers", "headers")):
        if alias in connection:
            if name in connection:
                raise TypeError(f"native_lm: pass {name} or {alias}, not both")
            connection[name] = connection.pop(alias)
    engine, async_engine = native_engines(model, **connection)
    return (lm_class or dspy.LM)(model, engine=engine, async_engine=async_engine, **kwargs)
