"""DSPy's Chat and JSON adapters with their per-call work in Rust: the same messages, byte for byte, for less CPU.

:class:`NativeChatAdapter` and :class:`NativeJSONAdapter` are drop-in ``dspy.ChatAdapter`` / ``dspy.JSONAdapter``
subclasses::

    dspy.configure(lm=lm, adapter=NativeChatAdapter())

What DSPy recomputes on every call and depends only on the signature (the system message, the output-format
reminder, the fields' types) is computed once per signature, by DSPy's own code, and kept. What depends on the
call (each input value, the demos, the main request, the split of the completion into ``[[ ## field ## ]]``
sections) is written by ``dspyo3_native.ChatFormatter`` and ``dspyo3_native.chat_sections`` in Rust.

Where the Rust side does not follow DSPy's rules itself it hands the work back to DSPy, and counts it in
:data:`FALLBACKS` (logged once per reason at INFO): a value that is not plain JSON data (a pydantic model, an enum,
a ``dspy.Image``) is formatted by DSPy's ``format_field_value``; a completion with an unusual line break (U+2028
and the like) or a non-ASCII header line is parsed by ``ChatAdapter.parse``; a subclass that overrides how fields
are written (``format_system_message``, ``format_user_message_content``, ...) gets DSPy's formatting. Typed
output fields (anything but ``str``) are parsed by DSPy's ``parse_value`` after the native split; JSON completions
are parsed by ``JSONAdapter.parse``, whose first step is CPython's C JSON decoder. Tool calls, native response
types (citations, reasoning) and conversation history go through DSPy's planning and structure, with the message
text written natively.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

import dspy
from dspy.adapters import utils as dspy_utils
from dspy.adapters.types.base_type import CUSTOM_TYPE_START_IDENTIFIER
from dspy.utils.callback import with_callbacks
from dspy.utils.exceptions import AdapterParseError

from dspyo3_native import ChatFormatter, chat_sections

__all__ = ["FALLBACKS", "NativeChatAdapter", "NativeJSONAdapter", "StreamListener"]

logger = logging.getLogger(__name__)

FALLBACKS: Counter[str] = Counter()
"""How often the native adapters handed work back to DSPy, by reason: ``"value"`` (a value that is not plain JSON
data), ``"text"`` (a text with lone surrogates), ``"parse"`` (a completion DSPy splits by its own rules),
``"override"`` (a subclass that changes how text is written)."""
_LOGGED: set[str] = set()
_FALLBACK_LOCK = threading.Lock()  # `counter[key] += 1` is a read and a write (atomic only under a GIL)
_REASONS = {
    "value": "a value that is not plain JSON data (pydantic model, enum, dspy.Type) is formatted by DSPy",
    "text": "a text with lone surrogates (no UTF-8 form) is formatted by DSPy",
    "parse": "a completion with an unusual line break or a non-ASCII header line is parsed by DSPy",
    "override": "an adapter subclass that overrides field formatting is formatted by DSPy",
}
# what a subclass may override to change the text: overriding any of them gives that class DSPy's formatting
_TEXT_METHODS = ("format_system_message", "format_field_description", "format_field_structure",
                 "format_task_description", "user_message_output_requirements", "format_user_message_content",
                 "format_assistant_message_content", "format_demos", "format_field_with_value")


def _fell_back(reason: str) -> None:
    with _FALLBACK_LOCK:
        FALLBACKS[reason] += 1
        first = reason not in _LOGGED
        _LOGGED.add(reason)
    if first:
        logger.info("native adapter: %s (counted in dspyo3_types.adapters.FALLBACKS)", _REASONS[reason])


def _format_value(field_info: Any, value: Any) -> str:
    """DSPy's own formatting of one value the native side does not write itself."""
    _fell_back("value")
    text = dspy_utils.format_field_value(field_info, value)
    return text if isinstance(text, str) else str(text)


def _json_outputs(values: dict[str, Any]) -> str:
    """DSPy's ``JSONAdapter`` assistant text for outputs that are not plain JSON data."""
    _fell_back("value")
    return json.dumps(dspy_utils.serialize_for_json(values), indent=2, ensure_ascii=False)


class _Plan:
    """What one adapter class makes of one signature class, once. It holds no reference to the signature (plans
    live in a ``WeakKeyDictionary`` keyed by it), only to its fields; the system message is rendered on first use,
    so a signature that only ever formats a user message (ReAct's trajectory) never pays for it."""

    __slots__ = ("_signature", "_system", "doc", "formatter", "history", "output_names", "output_types",
                 "outputs", "response_formats", "tool_calls", "typed", "without_history")

    def __init__(self, adapter: Any, signature: Any, json_outputs: bool, history: str | None,
                 tool_calls: bool) -> None:
        self._signature = weakref.ref(signature)
        self._system: str | None = None
        self.doc = signature.__doc__  # the instructions: DSPy's setter rewrites it in place
        outputs = dict(signature.output_fields)
        self.formatter = ChatFormatter(
            _triples(signature.input_fields), _triples(outputs), _format_value,
            requirements=adapter.user_message_output_requirements(signature), json_outputs=json_outputs,
            json_fallback=_json_outputs, marker=CUSTOM_TYPE_START_IDENTIFIER)
        self.outputs = outputs
        self.output_names = list(outputs)
        self.typed = frozenset(n for n, i in outputs.items() if i.annotation is not str)
        self.history = history
        self.without_history = signature.delete(history) if history else None
        self.output_types = frozenset(i.annotation for i in outputs.values() if isinstance(i.annotation, type))
        self.tool_calls = tool_calls
        self.response_formats: dict[bool, Any] = {}  # JSONAdapter's structured-output model, by native tool calling

    def system(self, adapter: Any) -> str:
        """The system message, as DSPy's ``format_system_message`` renders it (once)."""
        text = self._system
        if text is None:
            text = self._system = _DSPY_SYSTEM(adapter, self._signature())
        return text


def _triples(fields: dict[str, Any]) -> list[tuple[str, bool, Any]]:
    return [(name, info.annotation is str, info) for name, info in fields.items()]


class _NativeFormatting:
    """The formatting half shared by both adapters (mixed in before DSPy's class)."""

    _json_outputs_mode = False
    _native_ok: bool  # per class: it writes text as DSPy's adapters do (set on first use)
    _plans: weakref.WeakKeyDictionary[Any, _Plan]
    _plans_lock = threading.Lock()
    # DSPy's Adapter methods, found after this mixin in the adapters' MRO (declared for the type checker only)
    _get_history_field_name: Callable[[Any], str | None]
    _get_tool_call_output_field_name: Callable[[Any], str | None]

    def _native_plan(self, signature: Any) -> _Plan:
        # per adapter class, by signature class (DSPy makes a new class for every change of a signature, except the
        # instructions setter, which rewrites __doc__: checked on every call)
        plans = type(self).__dict__.get("_plans")
        if plans is None:
            with self._plans_lock:
                plans = type(self).__dict__.get("_plans")
                if plans is None:
                    plans = weakref.WeakKeyDictionary()
                    type(self)._plans = plans
        try:
            plan = plans.get(signature)
        except TypeError:  # not a signature class (no weak reference): fail as DSPy's adapter does on it
            return self._new_plan(signature)
        if plan is None or plan.doc is not signature.__doc__:
            plan = self._new_plan(signature)
            with self._plans_lock:
                plans[signature] = plan
        return plan

    def _new_plan(self, signature: Any) -> _Plan:
        # DSPy's own lookups of the history and tool-call fields (first: what is no signature fails here, as in DSPy)
        history = self._get_history_field_name(signature)
        tool_calls = self._get_tool_call_output_field_name(signature) is not None
        return _Plan(self, signature, self._json_outputs_mode, history, tool_calls)

    def _plain(self, plan: _Plan) -> bool:
        """Whether a call needs none of DSPy's planning: no native function calling, no ToolCalls output, no native
        response type (citations, reasoning) among the outputs."""
        adapter: Any = self
        return not adapter.use_native_function_calling and not plan.tool_calls and not any(
            t in plan.output_types for t in adapter.native_response_types)

    # -- the steps around the LM call: DSPy's, without recomputing the signature's fields on every call ----------
    def _call_preprocess(self, lm: Any, lm_kwargs: dict[str, Any], signature: Any, inputs: dict[str, Any]) -> Any:
        if self._plain(self._native_plan(signature)):
            for key in ("tools", "tool_choice", "parallel_tool_calls"):
                lm_kwargs.pop(key, None)
            return signature
        return super()._call_preprocess(lm, lm_kwargs, signature, inputs)  # type: ignore[misc]

    def _call_postprocess(self, processed_signature: Any, original_signature: Any, outputs: list[Any], lm: Any,
                          lm_kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        plan = self._native_plan(original_signature)
        if processed_signature is not original_signature or not self._plain(plan) or not all(
                type(output) is str for output in outputs):
            return list(super()._call_postprocess(  # type: ignore[misc]
                processed_signature, original_signature, outputs, lm, lm_kwargs))
        adapter: Any = self
        values = []
        for text in outputs:
            if not text:
                raise AdapterParseError(adapter_name=type(self).__name__, signature=original_signature,
                                        lm_response=str(text), message="The LM returned an empty or null response.")
            value = dspy_utils.apply_output_field_defaults(original_signature, adapter.parse(original_signature, text))
            for name in plan.output_names:
                value.setdefault(name, None)
            values.append(value)
        return values

    def _native(self) -> bool:
        """Whether this adapter writes text as DSPy's adapters do: no override of a text method below the native
        adapter it derives from, on its class or on the instance (an override gets DSPy's formatting, so it is
        honoured)."""
        cls = type(self)
        ok = cls.__dict__.get("_native_ok")
        if ok is None:
            base = NativeJSONAdapter if issubclass(cls, NativeJSONAdapter) else NativeChatAdapter
            ok = cls._native_ok = all(getattr(cls, name) is getattr(base, name) for name in _TEXT_METHODS)
        if ok:
            own = self.__dict__
            return not any(name in own for name in _TEXT_METHODS)
        return False

    # -- DSPy's adapter methods ---------------------------------------------------------------------------------
    def format(self, signature: Any, demos: list[dict[str, Any]], inputs: dict[str, Any]) -> list[dict[str, Any]]:
        if not self._native():
            _fell_back("override")
            return list(_DSPY_FORMAT(self, signature, demos, inputs))
        plan = self._native_plan(signature)
        try:
            if plan.history is None:
                messages, marked = plan.formatter.messages(plan.system(self), demos, inputs)
            else:  # DSPy's structure for a call with conversation history, each text written natively
                inputs_copy = dict(inputs)
                bare = plan.without_history
                adapter: Any = self
                history = adapter.format_conversation_history(bare, plan.history, inputs_copy)
                messages = [{"role": "system", "content": plan.system(self)}, *plan.formatter.demos(demos), *history]
                content = self.format_user_message_content(bare, inputs_copy, main_request=True)
                if content:
                    messages.append({"role": "user", "content": content})
                marked = True
        except UnicodeEncodeError:  # a lone surrogate somewhere: Rust strings are UTF-8
            _fell_back("text")
            return list(_DSPY_FORMAT(self, signature, demos, inputs))
        if marked:
            from dspy.adapters._legacy_type_markers import _expand_legacy_custom_type_markers_in_chat_message

            messages = [_expand_legacy_custom_type_markers_in_chat_message(m) for m in messages]
        return list(messages)

    def format_system_message(self, signature: Any) -> str:
        if not self._native():
            return str(_DSPY_SYSTEM(self, signature))
        return self._native_plan(signature).system(self)

    def format_demos(self, signature: Any, demos: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self._native():
            try:
                return list(self._native_plan(signature).formatter.demos(demos))
            except UnicodeEncodeError:
                _fell_back("text")
        return list(super().format_demos(signature, demos))  # type: ignore[misc]

    def format_user_message_content(self, signature: Any, inputs: dict[str, Any], prefix: str = "",
                                    suffix: str = "", main_request: bool = False) -> str:
        if self._native():
            try:
                return str(self._native_plan(signature).formatter.user(inputs, prefix, suffix, main_request))
            except UnicodeEncodeError:
                _fell_back("text")
        return str(super().format_user_message_content(  # type: ignore[misc]
            signature, inputs, prefix=prefix, suffix=suffix, main_request=main_request))

    def format_assistant_message_content(self, signature: Any, outputs: dict[str, Any],
                                         missing_field_message: Any = None) -> str:
        if self._native():
            try:
                return str(self._native_plan(signature).formatter.assistant(outputs, missing_field_message))
            except UnicodeEncodeError:
                _fell_back("text")
        return str(super().format_assistant_message_content(  # type: ignore[misc]
            signature, outputs, missing_field_message=missing_field_message))


class NativeChatAdapter(_NativeFormatting, dspy.ChatAdapter):
    """``dspy.ChatAdapter`` with its per-call formatting and section parsing in Rust: the same messages and the
    same parsed values (see the module docstring for what is handed back to DSPy). When a completion cannot be
    parsed, DSPy's JSON fallback is a :class:`NativeJSONAdapter`."""

    def parse(self, signature: Any, completion: str) -> dict[str, Any]:
        plan = self._native_plan(signature)
        found = chat_sections(completion, plan.output_names) if type(completion) is str else None
        if found is None:
            _fell_back("parse")
            return dict(_DSPY_CHAT_PARSE(self, signature, completion))
        fields: dict[str, Any] = {}
        for name, text in found:
            if name in plan.typed:
                try:
                    fields[name] = dspy_utils.parse_value(text, plan.outputs[name].annotation)
                except ValueError as e:
                    raise AdapterParseError(
                        adapter_name="ChatAdapter", signature=signature, lm_response=completion,
                        message=f"Failed to parse field {name} with value {text} from the LM response. "
                                f"Error message: {e}") from e
            else:
                fields[name] = text
        fields = dspy_utils.apply_output_field_defaults(signature, fields)
        if fields.keys() != plan.outputs.keys():
            raise AdapterParseError(adapter_name="ChatAdapter", signature=signature, lm_response=completion,
                                    parsed_result=fields)
        return fields

    def _make_json_adapter_fallback(self) -> NativeJSONAdapter:
        return NativeJSONAdapter(use_native_function_calling=self.use_native_function_calling,
                                 parallel_tool_calls=self.parallel_tool_calls)


class NativeJSONAdapter(_NativeFormatting, dspy.JSONAdapter):
    """``dspy.JSONAdapter`` with its per-call formatting in Rust: the same messages (assistant demos as DSPy's
    indented JSON); completions are parsed by ``JSONAdapter.parse``."""

    _json_outputs_mode = True
    # DSPy wraps an adapter's format and parse in its callback dispatch once per class that defines them, so a
    # JSONAdapter call reports format twice and parse once: the same counts here
    format = with_callbacks(_NativeFormatting.format)

    def parse(self, signature: Any, completion: str) -> dict[str, Any]:
        return dict(_DSPY_JSON_PARSE(self, signature, completion))

    def _prepare_response_format(self, lm: Any, lm_kwargs: dict[str, Any], signature: Any) -> None:
        """DSPy's choice of ``response_format``, with the structured-output model (a pydantic model built from the
        signature, about 0.4 ms each time) built once per signature."""
        if _structured_format is None or "response_format" not in lm.supported_params:
            super()._prepare_response_format(lm, lm_kwargs, signature)
            return
        plan = self._native_plan(signature)
        if (_open_ended_mapping(signature) or (not self.use_native_function_calling and plan.tool_calls)
                or not lm.supports_response_schema):
            lm_kwargs["response_format"] = {"type": "json_object"}
            return
        formats = plan.response_formats
        found = formats.get(self.use_native_function_calling)
        if found is None:
            try:
                found = _structured_format(signature, self.use_native_function_calling)
            except Exception:  # DSPy's own handling (a warning, JSON mode): not kept, so it warns as DSPy does
                super()._prepare_response_format(lm, lm_kwargs, signature)
                return
            # DSPy's model answers model_json_schema() with one dict, which LM clients edit in place (LiteLLM's
            # strict-schema conversion) and dspy.cache hashes: hand every caller a fresh copy of the pristine one
            pristine = copy.deepcopy(found.model_json_schema())
            found.model_json_schema = lambda *args, **kwargs: copy.deepcopy(pristine)
            formats[self.use_native_function_calling] = found
        lm_kwargs["response_format"] = found


class StreamListener(dspy.streaming.StreamListener):
    """``dspy.streaming.StreamListener`` that also knows the native and strict adapters: DSPy's listener finds the
    adapter's field markers by its class name, and refuses any name it does not know. Use it in place of DSPy's
    with ``dspy.streamify(program, stream_listeners=[StreamListener("answer")])``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        known = self.adapter_identifiers
        for name in ("NativeChatAdapter", "StrictChatAdapter"):
            known.setdefault(name, known["ChatAdapter"])
        for name in ("NativeJSONAdapter", "StrictJSONAdapter"):
            known.setdefault(name, known["JSONAdapter"])


try:  # JSONAdapter's helpers (private names: a DSPy that moves them gets its own _prepare_response_format)
    from dspy.adapters.json_adapter import _get_structured_outputs_response_format as _structured_format
    from dspy.adapters.json_adapter import _has_open_ended_mapping as _open_ended_mapping
except ImportError:  # pragma: no cover
    _structured_format = None

# DSPy's own methods, below the callback wrappers DSPy puts on format and parse (a fallback inside our wrapped
# method must not report a second call)
_DSPY_FORMAT = inspect.unwrap(dspy.ChatAdapter.format)
_DSPY_SYSTEM = dspy.ChatAdapter.format_system_message
_DSPY_CHAT_PARSE = inspect.unwrap(dspy.ChatAdapter.parse)
_DSPY_JSON_PARSE = inspect.unwrap(dspy.JSONAdapter.parse)
