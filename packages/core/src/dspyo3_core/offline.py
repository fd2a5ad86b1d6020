"""The offline LM: answers any DSPy signature from the prompt itself, with no model and no network.

``DSPYO3_LM=offline/extractive`` (or a profile with ``provider = "offline"``) gives an :class:`OfflineLM`.
It is **not a model**: for each output field the prompt asks for it writes a value of the right type, taken from
the prompt (:func:`offline_answer`):

- ``str``: the sentence of the inputs that shares most words with the question (extractive); a field named
  ``reasoning`` says that no model was called;
- ``int`` / ``float``: the last number of the question (else of the other inputs), else 0;
- ``bool``: True; ``Literal``: the allowed option sharing most words with the question (the first on a tie;
  ``finish`` once a tool has been observed, so ReAct loops end; a failed tool call's error message is never
  copied into an answer);
- lists, tuples, dicts, enums, dates and Pydantic models: a small valid value from the JSON schema in the prompt
  (a list of strings holds the id of the passage quoted, ``[id] text``, or the sentence);
- few-shot prompts (demos as earlier assistant turns): a free-text field follows the demos' format where they show
  one (numbers written as the demos write theirs, or one of a repeated label set); see :func:`_echo_demos`.

Answers are formatted for the adapter that asked (ChatAdapter ``[[ ## field ## ]]`` sections, or a JSON object).
Calls go through the ``dspyo3_lm_call`` hook like any LM, so metrics, logs, caches and budgets see them; usage
counts whitespace tokens and the cost is 0. ``dspyo3 lm offline`` serves the same answers over HTTP
(OpenAI-compatible) for programs that need an endpoint.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dspy

from dspyo3_core.call import wrappers_async_aware
from dspyo3_core.lm import LMCall, manager_token, note_result, plugin_manager_for

if TYPE_CHECKING:
    from dspyo3_core.plugins import PluginManager

__all__ = ["OFFLINE_LABEL", "OFFLINE_SHORT_LABEL", "OfflineLM", "offline_answer", "offline_responder"]

OFFLINE_LABEL = "Offline LM (not a model): every value is copied or derived from the prompt."
#: How the CLI names this LM wherever it reports one (``lm test``, ``doctor``, ``demo``).
OFFLINE_SHORT_LABEL = "offline LM (extractive, not a model)"
MODES = ("extractive",)

_SECTION = re.compile(r"\[\[ ## (\w+) ## \]\]\n(.*?)(?=\n\n\[\[ ## |\n\nRespond with |\Z)", re.S)
_PLACEHOLDER = re.compile(r"^\[\[ ## (\w+) ## \]\]\n\{\1\}(?:[ \t]*# note: ([^\n]*))?", re.M)
_JSON_FIELD = re.compile(r'^\s*"(\w+)": "\{\1\}(?:\s*# note: ((?:[^"\\]|\\.)*))?",?$', re.M)
_OUTPUTS = re.compile(r"Your output fields are:\n(.*?)(?:\nAll interactions|\Z)", re.S)
_OUTPUT_LINE = re.compile(r"^\d+\. `(\w+)` \(([^)]*(?:\([^)]*\))?[^)]*)\)", re.M)
_WORD = re.compile(r"[a-z0-9]+")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_PASSAGE_ID = re.compile(r"^\[([^\]\s]{1,80})\]\s*")
_STOP = frozenset(("the", "a", "an", "of", "to", "in", "on", "and", "or", "is", "are", "was", "were", "be", "for",
                   "with", "what", "which", "who", "how", "why", "when", "does", "do", "that", "this", "it", "its",
                   "as", "by", "at", "from"))
_QUERY_NAMES = ("question", "query", "task", "claim", "problem", "input", "request")


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1}


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content or "")


def _sections(text: str) -> dict[str, str]:
    return {name: value.strip() for name, value in _SECTION.findall(text) if name != "completed"}


def _output_fields(system: str) -> list[tuple[str, str, str]]:
    """``(name, type, note)`` of each output field the system prompt asks for."""
    notes: dict[str, str] = {}
    names: list[str] = []
    for name, note in _PLACEHOLDER.findall(system) + _JSON_FIELD.findall(system):
        if name != "completed":
            notes.setdefault(name, note.replace('\\"', '"').replace("\\\\", "\\"))
            names.append(name)
    block = _OUTPUTS.search(system)
    types = dict(_OUTPUT_LINE.findall(block.group(1))) if block else {}
    ordered = list(types) or list(dict.fromkeys(names))
    return [(name, types.get(name, "str"), notes.get(name, "")) for name in ordered]


def _passages(value: str) -> list[str]:
    try:
        parsed = json.loads(value)
    except ValueError:
        return [value]
    if isinstance(parsed, list):
        return [p if isinstance(p, str) else json.dumps(p) for p in parsed]
    return [value]


def _sentences(passage: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", passage) if s.strip()]


_NOT_SUPPLIED = "Not supplied for this particular example."
# how ReAct (DSPy's and dspyo3-agents') words a failed tool call or an unusable step in an observation
_TOOL_FAILURE = re.compile(r"^(?:Error: |Execution error in |Failed to execute|Your last answer could not be used)")
_TRAJECTORY_FIELDS = ("thought_", "tool_name_", "tool_args_", "observation_")
_NUMBER_FORMAT = re.compile(r"^(\D{0,20}?)(-?\d[\d,]*(?:\.(\d+))?)(\D{0,20})$")


def _demo_outputs(messages: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Each output field's values in the demos (the assistant turns before the request), in order."""
    found: dict[str, list[str]] = {}
    for message in messages:
        if message.get("role") != "assistant":
            continue
        text = _text(message.get("content")).strip()
        values: dict[str, Any] = _sections(text)
        if not values:  # JSONAdapter demos are JSON objects
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            values = parsed if isinstance(parsed, dict) else {}
        for name, value in values.items():
            value = (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)).strip()
            if value and value != _NOT_SUPPLIED:
                found.setdefault(str(name), []).append(value)
    return found


def _number_format(demos: list[str]) -> tuple[str, str, int | None, bool] | None:
    """``(prefix, suffix, decimals, thousands)`` when every demo value is one number with the same text around it
    (``42``, ``$1,200``, ``3.50 kg``); ``decimals`` is None unless every demo shows the same number of them."""
    parts = [_NUMBER_FORMAT.match(value) for value in demos]
    if not parts or any(p is None for p in parts):
        return None
    matches = [p for p in parts if p is not None]
    prefixes, suffixes = {m.group(1) for m in matches}, {m.group(4) for m in matches}
    if len(prefixes) != 1 or len(suffixes) != 1:
        return None
    places = {len(m.group(3) or "") for m in matches}
    decimals = places.pop() if len(places) == 1 else None
    return prefixes.pop(), suffixes.pop(), decimals, any("," in m.group(2) for m in matches)


def _echo_demos(demos: list[str], prompt: _Prompt) -> str | None:
    """A value for a free-text field in the demos' format, or None when the demos show no format to follow.

    Numbers (every demo value one number with the same text around it): the prompt's number (:meth:`_Prompt.number`)
    written as the demos write theirs. A closed set of labels (some demo value repeats, each at most three words):
    the label sharing most words with the question (the first seen on a tie). Nothing is computed or looked up:
    the value is still copied from the prompt, only its form follows the demos."""
    shape = _number_format(demos)
    if shape is not None:
        prefix, suffix, decimals, thousands = shape
        value = prompt.number()
        if decimals is not None and (decimals > 0 or value.is_integer()):
            text = f"{value:,.{decimals}f}" if thousands else f"{value:.{decimals}f}"
        else:
            text = f"{value:,g}" if thousands and abs(value) < 1e15 else f"{value:g}"
            if value.is_integer() and abs(value) < 1e15:
                text = f"{int(value):,}" if thousands else str(int(value))
        return f"{prefix}{text}{suffix}"
    labels = list(dict.fromkeys(demos))
    if len(labels) < len(demos) and all(len(label.split()) <= 3 for label in labels):
        return prompt.choose(labels)
    return None


class _Prompt:
    """What the answer is drawn from: the question and the other inputs' passages."""

    def __init__(self, messages: Sequence[Mapping[str, Any]]) -> None:
        self.system = next((_text(m.get("content")) for m in messages if m.get("role") == "system"), "")
        user = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        self.all_text = "\n".join(_text(m.get("content")) for m in messages)
        self.inputs = _sections(user)
        query_name = next((n for n in _QUERY_NAMES if n in self.inputs), None)
        if query_name is None and self.inputs:
            query_name = min(self.inputs, key=lambda n: len(self.inputs[n]))
        self.query = self.inputs.get(query_name or "", user if not self.inputs else "")
        self.trajectory = self.inputs.get("trajectory", "")
        # tools' results come first; a failed call's observation is an error message, never material for an answer
        self.observed = [name for name in self.inputs if name.startswith("observation_")]
        results = [name for name in self.observed if not _TOOL_FAILURE.match(self.inputs[name])
                   and self.inputs.get("tool_name_" + name.removeprefix("observation_"), "").strip() != "finish"]
        sources = results or [
            name for name in self.inputs
            if name not in (query_name, "trajectory") and not name.startswith(_TRAJECTORY_FIELDS)]
        self.passages = [p for name in sources for p in _passages(self.inputs[name])]
        self.demos = _demo_outputs(messages)

    @functools.cached_property
    def best(self) -> tuple[str, str]:
        """``(passage id, sentence)``: the input sentence sharing most words with the query (first on a tie)."""
        query = _words(self.query)
        best_score, best = -1, ("", "")
        for passage in self.passages:
            match = _PASSAGE_ID.match(passage)
            ident, body = (match.group(1), passage[match.end():]) if match else ("", passage)
            for sentence in _sentences(body) or [body]:
                score = len(_words(sentence) & query)
                if score > best_score:
                    best_score, best = score, (ident, sentence)
        return best if best[1] else ("", self.query.strip() or "(the prompt had no text to answer from)")

    def number(self) -> float:
        found = _NUMBER.findall(self.query) or [n for p in self.passages for n in _NUMBER.findall(p)]
        return float(found[-1].replace(",", "")) if found else 0.0

    def choose(self, options: list[str]) -> str:
        if "finish" in options and self.observed:
            return "finish"  # a ReAct trajectory with an observation (a result or an error): stop here
        query = _words(self.query)
        return max(options, key=lambda o: (len(_words(o) & query), -options.index(o)))


_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2})?))?")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\b")
_URL = re.compile(r"\bhttps?://[^\s\]\)\"'<>]+")


def _formatted(fmt: str, prompt: _Prompt) -> str | None:
    """A string in JSON-schema ``format`` ``fmt``: the first one in the prompt, else a fixed neutral value
    (the epoch, the nil UUID, a zero duration), so the field still validates; None for formats not handled."""
    text = "\n".join([prompt.query, *prompt.passages])
    if fmt in ("date-time", "date", "time"):
        found = _ISO_DATE.search(text)
        day, clock = (found.group(0)[:10], found.group(4) or "00:00:00") if found else ("1970-01-01", "00:00:00")
        clock = clock if clock.count(":") == 2 else clock + ":00"
        return {"date-time": f"{day}T{clock}", "date": day, "time": clock}[fmt]
    if fmt == "uuid":
        match = _UUID.search(text)
        return match.group(0) if match else "00000000-0000-0000-0000-000000000000"
    if fmt == "duration":
        return "PT0S"
    if fmt == "uri":
        match = _URL.search(text)
        return match.group(0).rstrip(".,;:") if match else "http://offline.invalid/"
    return None


def _bounded(value: float, schema: Mapping[str, Any]) -> float:
    """``value`` moved inside the schema's ``minimum``/``maximum`` (exclusive bounds: one step inside)."""
    low, high = schema.get("minimum"), schema.get("maximum")
    above, below = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(low, (int, float)) and value < low:
        value = float(low)
    if isinstance(above, (int, float)) and value <= above:
        value = float(above) + 1
    if isinstance(high, (int, float)) and value > high:
        value = float(high)
    if isinstance(below, (int, float)) and value >= below:
        value = float(below) - 1
    return value


def _from_schema(schema: Mapping[str, Any], prompt: _Prompt, defs: Mapping[str, Any], depth: int = 0) -> Any:
    """A small value valid for ``schema``, drawn from the prompt where the type allows."""
    if depth > 8:
        return None
    if "$ref" in schema:
        target = defs.get(str(schema["$ref"]).rsplit("/", 1)[-1], {})
        return _from_schema(target, prompt, defs, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            choices = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return _from_schema(choices[0], prompt, defs, depth + 1)
    if schema.get("enum"):
        options = list(schema["enum"])
        if all(isinstance(o, str) for o in options):
            return prompt.choose(options)
        return options[0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        required = schema.get("required") or list(properties)
        return {name: _from_schema(properties[name], prompt, defs, depth + 1) for name in required
                if name in properties}
    if kind == "array":
        if schema.get("prefixItems"):  # a tuple: one value per position, each of its own type
            values = [_from_schema(item, prompt, defs, depth + 1) for item in schema["prefixItems"]]
            extra = schema.get("items")
            count = int(schema.get("minItems") or 0)
            while isinstance(extra, dict) and len(values) < count:
                values.append(_from_schema(extra, prompt, defs, depth + 1))
            return values
        items = schema.get("items") or {}
        if items.get("type") == "string" and not items.get("enum") and not items.get("format"):
            ident, sentence = prompt.best
            return [ident or sentence]
        count = max(int(schema.get("minItems") or 0), 1)
        if isinstance(schema.get("maxItems"), int):
            count = min(count, int(schema["maxItems"]))
        return [_from_schema(items, prompt, defs, depth + 1) for _ in range(count)]
    if kind == "integer":
        return int(_bounded(int(prompt.number()), schema))
    if kind == "number":
        return _bounded(prompt.number(), schema)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    formatted = _formatted(str(schema.get("format") or ""), prompt)
    if formatted is not None:
        return formatted
    text = prompt.best[1]
    if isinstance(schema.get("maxLength"), int):
        text = text[: int(schema["maxLength"])]
    return text


_TOOL = re.compile(r"\(\d+\) (\w+), whose description is .*?It takes arguments (\{.*?\})\.\n", re.S)
_ARITHMETIC = re.compile(r"[-+*/().\d\s]*\d[-+*/().\d\s]*[-+*/][-+*/().\d\s]*\d[-+*/().\d\s]*")


def _tool_args(prompt: _Prompt, tool: str) -> dict[str, Any]:
    """Arguments for ``tool`` (as ReAct lists them in the prompt): strings get the question (an arithmetic
    expression for ``expression``-like names), other types a small valid value."""
    import ast

    for name, spec in _TOOL.findall(prompt.system):
        if name != tool:
            continue
        try:
            properties = ast.literal_eval(spec)
        except (ValueError, SyntaxError):
            return {}
        args: dict[str, Any] = {}
        for arg, schema in (properties if isinstance(properties, dict) else {}).items():
            schema = schema if isinstance(schema, dict) else {}
            if schema.get("type", "string") == "string":
                found = _ARITHMETIC.findall(prompt.query) if arg in ("expression", "expr", "formula") else []
                args[str(arg)] = max(found, key=len).strip() if found else prompt.query.strip()
            else:
                args[str(arg)] = _from_schema(schema, prompt, {})
        return args
    return {}


def _value(name: str, type_name: str, note: str, prompt: _Prompt) -> Any:
    if name in ("reasoning", "rationale") or "thought" in name:
        return OFFLINE_LABEL
    if "single int value" in note or type_name == "int":
        return int(prompt.number())
    if "single float value" in note or type_name == "float":
        return prompt.number()
    if "True or False" in note or type_name == "bool":
        return True
    if "one of:" in note:
        return prompt.choose([o.strip() for o in note.split("one of:", 1)[1].split(";") if o.strip()])
    if "JSON schema:" in note:
        try:
            schema = json.loads(note.split("JSON schema:", 1)[1].strip())
        except ValueError:
            schema = {}
        if isinstance(schema, dict):
            return _from_schema(schema, prompt, schema.get("$defs") or {})
    if type_name.startswith(("dict", "Dict")):
        return {}
    if type_name.startswith(("list", "List")):
        ident, sentence = prompt.best
        return [ident or sentence]
    if prompt.demos.get(name) and not note:  # few-shot: answer in the demos' format where they show one
        echoed = _echo_demos(prompt.demos[name], prompt)
        if echoed is not None:
            return echoed
    return prompt.best[1]


def offline_answer(messages: Sequence[Mapping[str, Any]]) -> str:
    """The offline LM's answer to a chat request: every output field the prompt asks for, type-correct and
    formatted for the adapter that wrote the prompt (a JSON object for JSONAdapter, else ChatAdapter sections).

    A prompt that names no output fields gets an ``answer`` field.
    """
    prompt = _Prompt(messages)
    fields = _output_fields(prompt.system) or [("answer", "str", "")]
    values = {name: _value(name, type_name, note, prompt) for name, type_name, note in fields}
    if isinstance(values.get("next_tool_name"), str) and "next_tool_args" in values:  # ReAct
        values["next_tool_args"] = _tool_args(prompt, str(values["next_tool_name"]))
    if "Outputs will be a JSON object" in prompt.system or "Respond with a JSON object" in prompt.all_text:
        return json.dumps(values, ensure_ascii=False)
    parts = [f"[[ ## {name} ## ]]\n{value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}"
             for name, value in values.items()]
    return "\n\n".join([*parts, "[[ ## completed ## ]]"])


def offline_responder() -> Any:
    """A :class:`~dspyo3_core.testing.LMServer` responder giving :func:`offline_answer` (``dspyo3 lm offline``)."""

    def respond(request: dict[str, Any]) -> str:
        return offline_answer(request.get("messages") or [])

    return respond


def _tokens(text: str) -> int:
    return len(text.split())


class OfflineLM(dspy.BaseLM):  # type: ignore[misc]  # dspy ships no types: BaseLM is Any
    """A ``dspy.BaseLM`` answering from the prompt (:func:`offline_answer`); not a model.

    Every call goes through the ``dspyo3_lm_call`` hook (so the production stack sees it); usage counts
    whitespace tokens, cost is 0. Build it with ``DSPYO3_LM=offline/extractive`` or ``OfflineLM()``.
    """

    def __init__(self, model: str = "offline/extractive", *, plugin_manager: PluginManager | None = None,
                 **kwargs: Any) -> None:
        mode = model.split("/", 1)[1] if "/" in model else model
        if mode not in MODES:
            raise ValueError(f"unknown offline LM {model!r}; use one of: "
                             f"{', '.join('offline/' + m for m in MODES)}")
        kwargs.pop("api_key", None)
        kwargs.pop("api_base", None)
        super().__init__(model=f"offline/{mode}", model_type="chat", temperature=float(kwargs.pop("temperature", 0.0)),
                         max_tokens=int(kwargs.pop("max_tokens", 4000)), cache=False, **kwargs)
        self._dspyo3_pm_token = manager_token(plugin_manager) if plugin_manager is not None else None

    @property
    def plugin_manager(self) -> PluginManager:
        """The plugin manager whose ``dspyo3_lm_call`` hook this LM calls."""
        return plugin_manager_for(self)

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        return self.plugin_manager.lm_call_hook(call=LMCall(self, prompt, messages, kwargs))

    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        manager = self.plugin_manager
        call = LMCall(lm=self, prompt=prompt, messages=messages, kwargs=kwargs, is_async=True)
        if wrappers_async_aware(manager):  # on the loop: the chain returns an awaitable of the outputs
            call.deferred = True
            return await manager.lm_call_hook(call=call)
        import anyio.to_thread

        return await anyio.to_thread.run_sync(functools.partial(manager.hook.dspyo3_lm_call, call=call))

    def forward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        """An OpenAI-shaped response record for one call (no history)."""
        return self._record(self._messages(prompt, messages), int(kwargs.get("n") or 1))

    async def aforward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        """Async :meth:`forward`."""
        return self.forward(prompt, messages, **kwargs)

    @staticmethod
    def _messages(prompt: Any, messages: Any) -> list[dict[str, Any]]:
        return list(messages) if messages else [{"role": "user", "content": str(prompt or "")}]

    def _record(self, messages: list[dict[str, Any]], n: int) -> dict[str, Any]:
        content = offline_answer(messages)
        prompt_tokens = sum(_tokens(_text(m.get("content"))) for m in messages)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": _tokens(content) * n,
                 "total_tokens": prompt_tokens + _tokens(content) * n}
        return {"model": self.model, "usage": usage,
                "choices": [{"index": i, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"} for i in range(n)]}

    async def _dspyo3_ainvoke(self, prompt: Any, messages: Any, kwargs: dict[str, Any]) -> list[Any]:
        """The async real call of a deferred :class:`~dspyo3_core.call.LMCall`: the answer is worked out in
        process, with no I/O, so it runs on the event loop like the sync one."""
        return self._dspyo3_invoke(prompt, messages, kwargs)

    def _dspyo3_invoke(self, prompt: Any, messages: Any, kwargs: dict[str, Any]) -> list[Any]:
        """One call (the hook chain's innermost step for this LM): answer, usage, history."""
        msgs = self._messages(prompt, messages)
        record = self._record(msgs, int(kwargs.get("n") or 1))
        outputs = [choice["message"]["content"] for choice in record["choices"]]
        usage = dict(record["usage"])
        settings = dspy.settings
        if settings.usage_tracker:
            settings.usage_tracker.add_usage(self.model, dict(usage))
        note_result(self, usage, 0.0, False)
        if not settings.disable_history:
            self.update_history({
                "prompt": prompt, "messages": msgs,
                "kwargs": {k: v for k, v in kwargs.items() if not k.startswith("api_")},
                "response": record, "outputs": outputs, "usage": usage, "cost": 0.0,
                "timestamp": datetime.datetime.now().isoformat(), "uuid": str(uuid.uuid4()),
                "model": self.model, "response_model": self.model, "model_type": self.model_type,
            })
        return outputs

    def __repr__(self) -> str:
        return f"OfflineLM({self.model!r})"
