"""The Python half of the dspyo3 crate, compiled into the Rust library and imported as ``_dspyo3_bridge``.

Rust hands over JSON (signature specs, inputs) and gets JSON back (predictions), so values cross the boundary in
one C-speed step each way. Everything DSPy-specific (building signatures and Pydantic models from a Rust type
spec, running under ``dspy.context``, streaming, classifying exceptions) happens here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import traceback
from collections.abc import Iterator
from typing import Any, Literal, Optional

import dspy
import pydantic
import pydantic_core
from dspy.utils.callback import with_callbacks

_MODELS: dict[str, type[pydantic.BaseModel]] = {}


# -- types ------------------------------------------------------------------------------------------------------


def annotation(spec: dict[str, Any]) -> Any:
    """Python annotation for a Rust ``TypeSpec`` (see ``types.rs``)."""
    kind = spec["kind"]
    if kind == "str":
        return str
    if kind == "int":
        return int
    if kind == "float":
        return float
    if kind == "bool":
        return bool
    if kind == "any":
        return Any
    if kind == "list":
        return list[annotation(spec["item"])]  # type: ignore[misc]
    if kind == "tuple":
        return tuple.__class_getitem__(tuple(annotation(item) for item in spec["items"]))
    if kind == "optional":
        return Optional[annotation(spec["inner"])]  # noqa: UP045 - repr reads typing.Optional[...] in prompts
    if kind == "dict":
        return dict[str, annotation(spec["value"])]  # type: ignore[misc]
    if kind == "literal":
        return Literal.__getitem__(tuple(spec["values"]))
    if kind == "model":
        return _model(spec)
    if kind == "recursive":
        raise TypeError(f"type {spec['name']} contains itself; recursive types cannot be signature fields yet")
    raise ValueError(f"unknown dspyo3 type kind {kind!r}")


def _model(spec: dict[str, Any]) -> type[pydantic.BaseModel]:
    key = json.dumps(spec, sort_keys=True)
    model = _MODELS.get(key)
    if model is None:
        fields: dict[str, Any] = {}
        for field in spec["fields"]:
            ann = annotation(field["ty"])
            # Optional fields and #[serde(default)] fields may be missing: None, which dump() leaves out so serde
            # fills in None or the Rust default
            optional = field["ty"]["kind"] == "optional" or not field.get("required", True)
            default = None if optional else ...
            fields[field["name"]] = (ann, pydantic.Field(default, description=field.get("desc")))
        model = pydantic.create_model(spec["name"], __doc__=spec.get("doc"), **fields)
        _MODELS[key] = model
    return model


def make_signature(spec: dict[str, Any]) -> type[dspy.Signature]:
    """A ``dspy.Signature`` class from a Rust ``SignatureSpec``."""
    fields: dict[str, Any] = {}
    for role, field_type in (("inputs", dspy.InputField), ("outputs", dspy.OutputField)):
        for field in spec[role]:
            kwargs = {key: field[key] for key in ("desc", "prefix") if field.get(key) is not None}
            fields[field["name"]] = (annotation(field["ty"]), field_type(**kwargs))
    signature: type[dspy.Signature] = dspy.make_signature(fields, spec.get("instructions"),
                                                          spec.get("name") or "StringSignature")
    return signature


# -- modules ----------------------------------------------------------------------------------------------------


class Runner:
    """One DSPy module plus what is needed to call it with JSON inputs and read JSON outputs."""

    def __init__(self, program: Any, signature: type[dspy.Signature] | None = None) -> None:
        self.program = program
        self.coercers: dict[str, pydantic.TypeAdapter[Any]] = {}
        self.outputs: list[str] | None = None
        if signature is not None:
            for name, field in signature.input_fields.items():
                if field.annotation not in (str, int, float, bool, Any):
                    self.coercers[name] = pydantic.TypeAdapter(field.annotation)
            self.outputs = list(signature.output_fields)

    def kwargs(self, inputs: str | bytes) -> dict[str, Any]:
        values = json.loads(inputs)
        if not isinstance(values, dict):
            raise TypeError(f"program inputs must be a JSON object of field values, got {type(values).__name__}")
        for name, adapter in self.coercers.items():
            if name in values:
                values[name] = adapter.validate_python(values[name])
        return values

    def call(self, settings: dict[str, Any], inputs: str | bytes, traceparent: str | None = None) -> bytes:
        with traced(self.program, traceparent), dspy.context(**settings):
            return dump(self.program(**self.kwargs(inputs)))

    async def acall(self, settings: dict[str, Any], inputs: str | bytes, traceparent: str | None = None) -> bytes:
        with traced(self.program, traceparent), dspy.context(**settings):
            if has_aforward(self.program):
                return dump(await self.program.acall(**self.kwargs(inputs)))
            # DSPy's contract for a module with only `forward`: `dspy.asyncify` runs the sync call in a worker
            # thread (the loop stays free) with this context carried over
            return dump(await dspy.asyncify(self.program)(**self.kwargs(inputs)))

    async def stream(self, settings: dict[str, Any], inputs: str | bytes, sink: Any,
                     traceparent: str | None = None) -> None:
        """Run the program with ``dspy.streamify`` and hand each event to ``sink`` (a Rust callback).

        Events: ``("token", field, chunk, is_last)``, ``("status", message)``, ``("prediction", json_bytes)``.
        """
        from dspy.streaming import StatusMessage, StreamListener, StreamResponse

        fields = self.outputs if self.outputs is not None else _output_names(self.program)
        listeners = [StreamListener(signature_field_name=name) for name in fields]
        with traced(self.program, traceparent), dspy.context(**settings):
            # is_async_program: the program's acall runs on this loop (not a sync call in a worker thread); a
            # module with only `forward` runs in a worker thread instead (DSPy's asyncify)
            streaming = dspy.streamify(self.program, stream_listeners=listeners,
                                       is_async_program=has_aforward(self.program), async_streaming=True)
            async for item in streaming(**self.kwargs(inputs)):
                if isinstance(item, StreamResponse):
                    sink(("token", item.signature_field_name, item.chunk, bool(item.is_last_chunk)))
                elif isinstance(item, StatusMessage):
                    sink(("status", item.message))
                elif isinstance(item, dspy.Prediction):
                    sink(("prediction", dump(item)))


@contextlib.contextmanager
def traced(program: Any, traceparent: str | None) -> Iterator[None]:
    """Run one call under the caller's span (a W3C ``traceparent`` from Rust's ``CallOptions``; a malformed one is
    ignored) and, when a tracer is installed (``dspyo3_core.spans.TRACER``), in a program span under it.

    Without ``dspyo3_core`` imported no tracer can be installed, so an untraced call costs a dictionary lookup."""
    spans = sys.modules.get("dspyo3_core.spans")
    if spans is None and traceparent is not None:
        try:
            from dspyo3_core import spans
        except ImportError:  # dspyo3-core is not installed: nothing could record or propagate the trace
            spans = None
    if spans is None:
        yield
        return
    with spans.remote_parent(traceparent):
        tracer = spans.TRACER
        if tracer is None:
            yield
            return
        name = type(program).__name__
        with tracer.start(f"dspyo3.program {name}", attrs={"dspyo3.program.name": name,
                                                         "openinference.span.kind": "CHAIN"}):
            yield


def has_aforward(program: Any) -> bool:
    """Whether ``program.acall`` can run: DSPy's ``Module.acall`` awaits ``aforward``, which a module defining
    only ``forward`` lacks (built-in modules have both)."""
    return callable(getattr(program, "aforward", None))


def _output_names(program: Any) -> list[str]:
    names: list[str] = []
    for _, predictor in program.named_predictors():
        names.extend(name for name in predictor.signature.output_fields if name not in names)
    return names


def dump(prediction: Any) -> bytes:
    """JSON of a prediction's fields (Pydantic models, enums and datetimes included)."""
    if isinstance(prediction, dspy.Prediction):
        values = dict(prediction.items())
    elif isinstance(prediction, dict):
        values = prediction
    else:
        values = {"output": prediction}
    # None values are left out: serde reads a missing Option as None and a missing #[serde(default)] field as its
    # default, while an explicit null would fail for the latter
    return pydantic_core.to_json(values, fallback=str, exclude_none=True)


def build(kind: str, spec_json: str, options_json: str, tools: list[Any] | None = None) -> Runner:
    """A Runner for ``predict`` / ``chain_of_thought`` / ``react`` over a Rust signature spec."""
    signature = make_signature(json.loads(spec_json))
    options = json.loads(options_json)
    if kind == "predict":
        program: Any = dspy.Predict(signature, **options)
    elif kind == "chain_of_thought":
        program = dspy.ChainOfThought(signature, **options)
    elif kind == "react":
        program = dspy.ReAct(signature, tools=tools or [], **options)
    else:
        raise ValueError(f"unknown module kind {kind!r}")
    return Runner(program, signature)


def load_state(runner: Runner, path: str) -> None:
    """Load a state saved with ``program.save(path)`` into the runner's program: JSON only (pickles are refused),
    and learned state only (demos, instructions, field descriptions): a file that carries LM settings, other
    attributes or code is refused (``dspyo3_core.program_state``)."""
    from dspyo3_core.program_state import load_state_file

    runner.program.load_state(load_state_file(path, program=runner.program))


def load_program(path: str, factory: str) -> Runner:
    """Build the program with ``factory`` ("package.module:attr", a class or zero-argument callable), load ``path``."""
    import importlib

    module_name, sep, attr = factory.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"program factory must look like 'package.module:Class', got {factory!r}")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    program = target()
    if not isinstance(program, dspy.Module):
        raise TypeError(f"{factory} returned {type(program).__name__}, not a dspy.Module")
    runner = Runner(program)
    load_state(runner, path)
    return runner


# -- tools ------------------------------------------------------------------------------------------------------


class RustTool(dspy.Tool):
    """A ``dspy.Tool`` whose function is Rust; on the async path it runs in a worker thread, off the event loop.

    DSPy's callbacks (``on_tool_start`` / ``on_tool_end``, and with them the ``StatusMessage``s of
    ``dspy.streamify``) run on the event loop, as for a Python tool: only the Rust function itself moves to the
    worker thread (DSPy's status callback cannot send from a plain worker thread).
    """

    @with_callbacks
    async def acall(self, **kwargs: Any) -> Any:
        parsed = self._validate_and_parse_args(**kwargs)
        return await asyncio.to_thread(self.func, **parsed)


def make_tool(func: Any, name: str, desc: str, args_json: str) -> RustTool:
    """Wrap ``func(json_args: str) -> str`` (a Rust closure) as a tool with the given JSON-schema arguments."""

    def call(**kwargs: Any) -> Any:
        return func(json.dumps(kwargs))

    call.__name__ = name
    return RustTool(call, name=name, desc=desc, args=json.loads(args_json))


# -- native transport -------------------------------------------------------------------------------------------


def make_native_lm(model: str, kwargs_json: str, api_key: str | None) -> Any:
    """``Lm::new(model).native()``: a ``dspyo3_core.native_lm.NativeLM`` (HTTP in Rust, ``dspyo3_native``)."""
    from dspyo3_core.native_lm import PROVIDERS, NativeLM

    kwargs = json.loads(kwargs_json)
    kwargs.pop("api_key", None)  # Rust hands the key over separately (from .api_key, the env or this kwarg)
    _register_secrets(api_key)
    lm = NativeLM(model, api_key=api_key, **kwargs)
    provider, sep, bare = model.partition("/")
    if sep and provider not in PROVIDERS:
        # a LiteLLM route NativeLM has no entry for ("openrouter/vendor/model", "deepseek/...") on the given
        # api_base: the server is sent the name after the route, as LiteLLM sends it
        lm.wire_model = bare
    return lm


# -- LM and settings --------------------------------------------------------------------------------------------


def make_lm(model: str, kwargs_json: str, api_key: str | None) -> Any:
    kwargs = json.loads(kwargs_json)
    if api_key is not None:
        kwargs["api_key"] = api_key
    _register_secrets(kwargs.get("api_key"), *(kwargs.get("headers") or {}).values())
    return dspy.LM(model, **kwargs)


def profile_lm(name: str | None) -> Any:
    from dspyo3_core.config import build_lm, load_settings

    return build_lm(load_settings().profile(name))


def adapter(name: str) -> Any:
    return {"chat": dspy.ChatAdapter, "json": dspy.JSONAdapter, "xml": dspy.XMLAdapter}[name]()


# -- errors -----------------------------------------------------------------------------------------------------


def _register_secrets(*values: Any) -> None:
    """Make the keys of LMs built here known secrets (``dspyo3_core.secrets``), so error text never carries them."""
    try:
        from dspyo3_core.secrets import register_secret
    except ImportError:  # dspyo3-core not installed: nothing else of ours prints or logs either
        return
    register_secret(*(v for v in values if isinstance(v, str)))


def _redact(text: Any) -> Any:
    """``text`` with every known secret masked (a gateway may echo the key it was sent in its error body)."""
    if not isinstance(text, str):
        return text
    try:
        from dspyo3_core.secrets import redact
    except ImportError:
        return text
    return redact(text)


def _mro_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


_LM_LIBRARIES = {"dspy", "litellm", "openai", "anthropic", "httpx", "httpcore", "aiohttp", "requests", "urllib3"}


def _from_lm_library(exc: BaseException) -> bool:
    """Raised by DSPy or an HTTP/LM client library (not by the user's own code)."""
    return type(exc).__module__.split(".")[0] in _LM_LIBRARIES


def _is_transport_timeout(exc: BaseException, names: set[str]) -> bool:
    """A client-side read/connect timeout that DSPy reports as a transport error (lm15 does)."""
    if "LMTransportError" not in names:
        return False
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text


def _classify(exc: BaseException) -> str | None:
    names = _mro_names(exc)
    if not _from_lm_library(exc):
        return None
    if "AdapterParseError" in names:
        return "parse"
    if "ContextWindowExceededError" in names:
        return "context_window"
    if names & {"LMRateLimitError", "RateLimitError"}:
        return "rate_limit"
    if names & {"LMTimeoutError", "Timeout", "TimeoutError", "APITimeoutError", "ReadTimeout", "ConnectTimeout",
                "TimeoutException"} or _is_transport_timeout(exc, names):
        return "timeout"
    if names & {"LMAuthError", "AuthenticationError", "PermissionDeniedError"}:
        return "auth"
    if names & {"LMError", "APIError", "APIConnectionError"}:
        return "lm"
    return None


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status an LM error carries (LiteLLM / OpenAI ``status_code``, lm15 ``status``, an httpx
    ``response.status_code``), or None."""
    for value in (getattr(exc, "status_code", None), getattr(exc, "status", None),
                  getattr(getattr(exc, "response", None), "status_code", None)):
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return value
    return None


def describe_error(exc: BaseException, tb: Any = None) -> dict[str, Any]:
    """Classify an exception for the Rust ``Error`` enum.

    Only errors raised by DSPy or an LM/HTTP client library count as LM errors; the search follows explicit
    causes (``raise X from e``) and, for library errors only, the implicit context, so an exception the user's own
    code raises while handling an LM error stays a Python error.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    kind = "python"
    found: BaseException = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        classified = _classify(current)
        if classified is not None:
            kind, found = classified, current
            break
        follow_context = _from_lm_library(current) and not current.__suppress_context__
        current = current.__cause__ or (current.__context__ if follow_context else None)
    retry_after = getattr(found, "retry_after", None)
    status = _http_status(found)
    retryable = None
    try:
        retryable = bool(dspy.is_retryable_lm_error(found))
    except Exception:
        retryable = None
    return {
        "kind": kind,
        "type": f"{type(found).__module__}.{type(found).__qualname__}",
        "message": _redact(str(found) or type(found).__name__),
        "retry_after": float(retry_after) if isinstance(retry_after, (int, float)) else None,
        "status": status if kind != "python" else None,
        "raw": _redact(getattr(found, "lm_response", None)) if kind == "parse" else None,
        "retryable": retryable,
        "traceback": _redact("".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))),
    }


