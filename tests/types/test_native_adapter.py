"""The native adapters write the same messages as DSPy's ChatAdapter / JSONAdapter and parse to the same values.

A property test generates signatures (nested pydantic models, Literals, enums, lists, dicts, Optionals, field
descriptions and prefixes, instructions), inputs, demos, conversation histories and completions, and compares
``format`` and ``parse`` of the native adapters with DSPy's own, value for value and error for error.
"""

from __future__ import annotations

import enum
import logging
from typing import Any, Literal

import dspy
import pydantic
import pytest
from dspy.utils.dummies import DummyLM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dspyo3_types import adapters
from dspyo3_types.adapters import FALLBACKS, NativeChatAdapter, NativeJSONAdapter
from dspyo3_types.parse import StrictChatAdapter, StrictJSONAdapter


class Color(str, enum.Enum):
    RED = "red"
    DARK_BLUE = "dark blue"


class Leaf(pydantic.BaseModel):
    name: Literal["x", "y z", "it's"]
    score: float = 0.0


class Node(pydantic.BaseModel):
    """A nested model with a description."""

    id: int
    tags: list[str] = []
    leaf: Leaf | None = None
    extra: dict[str, int] = {}


# text that exercises the escaping and section rules: quotes, backslashes, control characters, guillemets,
# newlines of every kind, header-like lines, non-ASCII
TRICKY = st.sampled_from(["\"", "\\", "\n", "\r\n", "\r", "\t", "\x00", "\x1f", "«", "»", "é", "\u2028", "\x85",
                          "[[ ## ", " ## ]]", "[[ ## answer ## ]]", "\u3000", " ", "{", "}", "None", "0.5"])
PLAIN = st.lists(st.text(max_size=6) | TRICKY, max_size=6).map("".join)  # signature text: DSPy needs UTF-8 there
# values may also hold lone surrogates
TEXT = st.lists(st.text(max_size=6) | TRICKY | st.just("\ud83d"), max_size=6).map("".join)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**20), max_value=10**20) | TEXT
    | st.floats(allow_nan=True, allow_infinity=True),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3)
    | st.tuples(inner, inner), max_leaves=6)
LEAF = st.builds(Leaf, name=st.sampled_from(["x", "y z", "it's"]), score=st.floats(allow_nan=False))
NODE = st.builds(Node, id=st.integers(), tags=st.lists(TEXT, max_size=2), leaf=st.none() | LEAF,
                 extra=st.dictionaries(TEXT, st.integers(), max_size=2))

# (annotation, strategy of its values)
TYPES: list[tuple[Any, Any]] = [
    (str, TEXT),
    (int, st.integers()),
    (float, st.floats()),
    (bool, st.booleans()),
    (list[str], st.lists(TEXT, max_size=4)),
    (list[int], st.lists(st.integers(), max_size=4)),
    (dict[str, Any], st.dictionaries(TEXT, JSON_VALUE, max_size=3)),
    (Literal["a", "b c", "it's", 'say "hi"'], st.sampled_from(["a", "b c", "it's", 'say "hi"'])),
    (int | None, st.none() | st.integers()),
    (str | None, st.none() | TEXT),
    (Color, st.sampled_from(list(Color))),
    (Node, NODE | NODE.map(lambda n: n.model_dump())),
    (list[Node], st.lists(NODE, max_size=2)),
]
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).map(lambda n: f"f_{n}")


@st.composite
def signatures(draw: Any) -> tuple[type[dspy.Signature], dict[str, Any], bool]:
    """A signature, the value strategy of each field, and whether it has a History input."""
    names = draw(st.lists(NAMES, min_size=2, max_size=7, unique=True))
    n_inputs = draw(st.integers(min_value=1, max_value=len(names) - 1))
    fields: dict[str, Any] = {}
    values: dict[str, Any] = {}
    for i, name in enumerate(names):
        annotation, strategy = draw(st.sampled_from(TYPES))
        kwargs: dict[str, Any] = {}
        if draw(st.booleans()):
            kwargs["desc"] = draw(PLAIN)
        if draw(st.integers(0, 3)) == 0:
            kwargs["prefix"] = draw(PLAIN)
        factory = dspy.InputField if i < n_inputs else dspy.OutputField
        fields[name] = (annotation, factory(**kwargs))
        # sometimes a value of another type than the annotation says: DSPy formats whatever it is given
        values[name] = draw(st.sampled_from([strategy, strategy, strategy, JSON_VALUE]))
    history = draw(st.integers(0, 3)) == 0
    if history:
        fields = {"history": (dspy.History, dspy.InputField()), **fields}
    instructions = draw(st.none() | PLAIN)
    return dspy.Signature(fields, instructions or None), values, history


@st.composite
def calls(draw: Any) -> tuple[type[dspy.Signature], list[Any], dict[str, Any]]:
    """A signature, its demos (complete, partial, None values, dspy.Example or dict) and the inputs of a call."""
    signature, values, history = draw(signatures())

    def record(fraction: float) -> dict[str, Any]:
        out = {}
        for name, strategy in values.items():
            if draw(st.floats(0, 1)) < fraction:
                out[name] = draw(st.none() | strategy) if draw(st.integers(0, 4)) == 0 else draw(strategy)
        return out

    demos: list[Any] = []
    for _ in range(draw(st.integers(0, 4))):
        demo = record(draw(st.sampled_from([0.5, 1.0])))
        demos.append(dspy.Example(**demo) if draw(st.booleans()) else demo)
    inputs = {name: draw(values[name]) for name in signature.input_fields if name in values
              and draw(st.integers(0, 5)) > 0}
    if history:
        inputs["history"] = dspy.History(messages=[record(0.6) for _ in range(draw(st.integers(0, 3)))])
    return signature, demos, inputs


def outcome(fn: Any, *args: Any) -> Any:
    """What a call returns, or the type and text of what it raises (compared as text: NaN is not equal to itself)."""
    try:
        return ("ok", repr(fn(*args)))
    except Exception as exc:  # the exception itself is what is compared
        return ("error", type(exc).__name__, str(exc))


@pytest.mark.filterwarnings("ignore:The 'prefix' argument:DeprecationWarning")
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(calls())
def test_messages_are_byte_identical_to_dspys(call: Any) -> None:
    signature, demos, inputs = call
    for stock, native in ((dspy.ChatAdapter(), NativeChatAdapter()), (dspy.JSONAdapter(), NativeJSONAdapter())):
        expected = outcome(stock.format, signature, demos, dict(inputs))
        assert outcome(native.format, signature, demos, dict(inputs)) == expected, type(native).__name__


@st.composite
def completions(draw: Any) -> tuple[type[dspy.Signature], str]:
    """A signature and a completion: DSPy's own rendering of drawn outputs, cut, shuffled and noised."""
    signature, values, _ = draw(signatures())
    outputs = {name: draw(values[name]) for name in signature.output_fields if draw(st.integers(0, 6)) > 0}
    try:
        lines = dspy.ChatAdapter().format_assistant_message_content(signature, outputs).split("\n")
    except TypeError:  # DSPy cannot render these values (a None in a list given to a str field)
        lines = []
    noise = st.sampled_from(["", "  ", "[[ ## completed ## ]]", "[[ ## unknown ## ]] x", "\u2028", "Sure:", "é"])
    for _ in range(draw(st.integers(0, 3))):
        lines.insert(draw(st.integers(0, len(lines))), draw(noise | TEXT))
    if draw(st.integers(0, 4)) == 0:
        name = draw(st.sampled_from(list(signature.output_fields)))
        lines.append(f"{draw(st.sampled_from(['', '  ', chr(9)]))}[[ ## {name} ## ]] {draw(TEXT)}")
    return signature, draw(st.sampled_from(["\n", "\r\n"])).join(lines)


@pytest.mark.filterwarnings("ignore:The 'prefix' argument:DeprecationWarning")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(completions())
def test_parses_equal_dspys(case: Any) -> None:
    signature, completion = case
    assert outcome(NativeChatAdapter().parse, signature, completion) == \
        outcome(dspy.ChatAdapter().parse, signature, completion)


def test_a_program_predicts_the_same_through_dspy_and_with_the_same_prompts() -> None:
    class QA(dspy.Signature):
        """Answer with a score."""

        question: str = dspy.InputField()
        answer: str = dspy.OutputField()
        score: float = dspy.OutputField()

    answers = [{"answer": "Paris", "score": "0.75"}]
    seen = []
    for adapter in (dspy.ChatAdapter(), NativeChatAdapter()):
        lm = DummyLM(answers * 2)
        with dspy.context(lm=lm, adapter=adapter):
            program = dspy.Predict(QA)
            program.demos = [dspy.Example(question="2+2?", answer="4", score=1.0)]
            prediction = program(question="Capital of France?")
        seen.append((prediction.answer, prediction.score, lm.history[-1]["messages"]))
    assert seen[0] == seen[1]
    assert seen[1][:2] == ("Paris", 0.75)


@pytest.mark.parametrize("make", [
    lambda: dspy.ChainOfThought("question -> answer: int"),
    lambda: dspy.Predict("question, context: list[str] -> answer: str, confidence: float"),
], ids=["chain-of-thought", "typed-predict"])
@pytest.mark.parametrize("pair", [(dspy.ChatAdapter, NativeChatAdapter), (dspy.JSONAdapter, NativeJSONAdapter)],
                         ids=["chat", "json"])
def test_programs_predict_the_same_through_both_adapters(make: Any, pair: Any) -> None:
    answers = [{"reasoning": "Two and two.", "answer": "4", "confidence": "0.5"}]
    seen = []
    for adapter in pair:
        lm = DummyLM(answers * 2, adapter=pair[0]())
        with dspy.context(lm=lm, adapter=adapter()):
            program = make()
            wanted = program.predictors()[0].signature.input_fields
            values = {"question": "2+2?", "context": ["a", "b"]}
            prediction = program(**{k: v for k, v in values.items() if k in wanted})
        seen.append((dict(prediction), lm.history[-1]["messages"]))
    assert seen[0] == seen[1]


def test_images_and_other_dspy_types_are_formatted_by_dspy_and_counted() -> None:
    class Look(dspy.Signature):
        picture: dspy.Image = dspy.InputField()
        caption: str = dspy.OutputField()

    image = dspy.Image("https://example.invalid/cat.png")
    before = FALLBACKS["value"]
    native = NativeChatAdapter().format(Look, [], {"picture": image})
    assert native == dspy.ChatAdapter().format(Look, [], {"picture": image})
    assert any(isinstance(m["content"], list) for m in native)  # the image became a content part, as in DSPy
    assert FALLBACKS["value"] > before


def test_unusual_line_breaks_are_parsed_by_dspy_visibly(caplog: pytest.LogCaptureFixture) -> None:
    signature = dspy.Signature("question -> answer")
    completion = "[[ ## answer ## ]]\nline\u2028two"
    before = FALLBACKS["parse"]
    adapters._LOGGED.discard("parse")
    with caplog.at_level(logging.INFO, logger="dspyo3_types.adapters"):
        assert NativeChatAdapter().parse(signature, completion) == dspy.ChatAdapter().parse(signature, completion)
    assert FALLBACKS["parse"] == before + 1
    assert "parsed by DSPy" in caplog.text


def test_a_subclass_that_writes_fields_itself_keeps_its_own_formatting() -> None:
    class Loud(NativeChatAdapter):
        def format_field_with_value(self, fields_with_values: Any) -> str:
            return super().format_field_with_value(fields_with_values).upper()

    signature = dspy.Signature("question -> answer")
    demos = [{"question": "q", "answer": "a"}]
    messages = Loud().format(signature, demos, {"question": "why"})
    assert messages[2]["content"] == "[[ ## ANSWER ## ]]\nA\n\n[[ ## completed ## ]]\n"


def test_strict_adapters_format_natively_and_fall_back_to_native_json() -> None:
    assert issubclass(StrictChatAdapter, NativeChatAdapter)
    assert issubclass(StrictJSONAdapter, NativeJSONAdapter)
    assert isinstance(NativeChatAdapter()._make_json_adapter_fallback(), NativeJSONAdapter)
    assert isinstance(StrictChatAdapter()._make_json_adapter_fallback(), StrictJSONAdapter)


def test_a_chat_answer_that_does_not_parse_is_retried_through_the_native_json_adapter() -> None:
    lm = DummyLM([{"answer": "not chat"}] * 2, adapter=dspy.JSONAdapter())  # JSON text: no chat sections
    calls: list[str] = []
    real = NativeJSONAdapter.format

    def spy(self: Any, *args: Any) -> Any:
        calls.append(type(self).__name__)
        return real(self, *args)

    NativeJSONAdapter.format = spy  # type: ignore[method-assign]
    try:
        with dspy.context(lm=lm, adapter=NativeChatAdapter()):
            assert dspy.Predict("question -> answer")(question="q").answer == "not chat"
    finally:
        NativeJSONAdapter.format = real  # type: ignore[method-assign]
    assert calls == ["NativeJSONAdapter"]


@pytest.mark.parametrize(("name", "body"), [
    ("format_system_message", lambda self, sig: "SYSTEM"),
    ("format_task_description", lambda self, sig: f"[{self.tag}] task"),
    ("user_message_output_requirements", lambda self, sig: "REMINDER"),
    ("format_user_message_content", lambda self, sig, inputs, prefix="", suffix="", main_request=False: "USER"),
    ("format_assistant_message_content", lambda self, sig, outputs, missing_field_message=None: "ASSISTANT"),
    ("format_demos", lambda self, sig, demos: [{"role": "user", "content": "one demo"}]),
])
@pytest.mark.parametrize("pair", [(dspy.ChatAdapter, NativeChatAdapter), (dspy.JSONAdapter, NativeJSONAdapter)],
                         ids=["chat", "json"])
def test_a_subclass_overriding_any_text_method_gets_what_dspy_gives_it(name: str, body: Any, pair: Any) -> None:
    signature = dspy.Signature("question -> answer")
    demos = [{"question": "q", "answer": "a"}]
    got = []
    for base in pair:
        subclass = type("Custom", (base,), {name: body})
        for tag in ("alpha", "beta"):  # the text may read the instance: nothing is kept across instances
            adapter = subclass()
            adapter.tag = tag
            got.append(adapter.format(signature, demos, {"question": "why"}))
    assert got[:2] == got[2:]
    if name == "format_task_description":
        assert got[3][0]["content"].endswith("[beta] task")


def test_instructions_set_in_place_are_seen() -> None:
    class Rules(dspy.Signature):
        """Old."""

        question: str = dspy.InputField()
        answer: str = dspy.OutputField()

    adapter = NativeChatAdapter()
    assert adapter.format(Rules, [], {"question": "q"})[0]["content"].endswith("Old.")
    Rules.instructions = "New rules."  # what dspy.teleprompt.InferRules does to a predictor's signature
    assert adapter.format(Rules, [], {"question": "q"}) == dspy.ChatAdapter().format(Rules, [], {"question": "q"})
    assert adapter.format(Rules, [], {"question": "q"})[0]["content"].endswith("New rules.")


def test_texts_with_lone_surrogates_are_formatted_by_dspy() -> None:
    text = "caf\u00e9 \ud83d"
    signature = dspy.Signature("question: str, items: list[str] -> answer")
    inputs = {"question": text, "items": [text, "x"]}
    demos = [{"question": text, "items": ["y"], "answer": {"k": text}}]
    before = FALLBACKS["text"]
    for stock, native in ((dspy.ChatAdapter(), NativeChatAdapter()), (dspy.JSONAdapter(), NativeJSONAdapter())):
        assert native.format(signature, demos, inputs) == stock.format(signature, demos, inputs)
        assert native.format_user_message_content(signature, inputs) == \
            stock.format_user_message_content(signature, inputs)
    assert FALLBACKS["text"] > before
    completion = f"[[ ## answer ## ]]\n{text}"
    assert NativeChatAdapter().parse(signature, completion) == dspy.ChatAdapter().parse(signature, completion)


def test_a_completion_that_is_not_text_fails_as_in_dspy() -> None:
    signature = dspy.Signature("question -> answer")
    assert outcome(NativeChatAdapter().parse, signature, None) == outcome(dspy.ChatAdapter().parse, signature, None)


@pytest.mark.parametrize("pair", [(dspy.ChatAdapter, NativeChatAdapter), (dspy.JSONAdapter, NativeJSONAdapter)],
                         ids=["chat", "json"])
def test_callbacks_see_the_same_calls_as_under_dspy(pair: Any) -> None:
    from dspy.utils.callback import BaseCallback

    counts = []
    for adapter_class in pair:
        class Count(BaseCallback):
            def __init__(self) -> None:
                self.seen: list[str] = []

            def on_adapter_format_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
                self.seen.append("format")

            def on_adapter_parse_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
                self.seen.append("parse")

        counter = Count()
        lm = DummyLM([{"answer": "x"}, {"answer": "line\u2028two"}], adapter=pair[0]())
        with dspy.context(lm=lm, adapter=adapter_class(), callbacks=[counter]):
            program = dspy.Predict("question -> answer")
            program(question="q")
            program(question="q2")  # a completion the chat side hands to DSPy's parse
        counts.append(sorted(counter.seen))
    assert counts[0] == counts[1]


def test_signatures_made_per_call_are_not_kept_alive() -> None:
    import gc
    import weakref

    adapter = NativeChatAdapter()
    signature = dspy.Signature("question, steps -> answer")
    adapter.format_user_message_content(signature, {"question": "q", "steps": "s"})
    ref = weakref.ref(signature)
    del signature
    gc.collect()
    assert ref() is None


def test_streaming_works_with_the_listener_that_knows_the_native_adapters() -> None:
    import asyncio

    from dspyo3_core.testing.server import LMServer, chat_reply
    from dspyo3_types.adapters import StreamListener

    chunks: dict[str, list[str]] = {}
    with LMServer() as server:
        for adapter, listener in ((dspy.ChatAdapter(), dspy.streaming.StreamListener),
                                  (NativeChatAdapter(), StreamListener)):
            server.script(chat_reply(answer="Paris is the capital of France."))
            lm = dspy.LM("openai/m", api_base=server.api_base, api_key="k", cache=False, num_retries=0)
            program = dspy.streamify(dspy.Predict("question -> answer"), stream_listeners=[listener("answer")])

            async def collect(lm: Any = lm, adapter: Any = adapter, program: Any = program) -> list[str]:
                with dspy.context(lm=lm, adapter=adapter):
                    return [item.chunk async for item in program(question="Capital of France?")
                            if isinstance(item, dspy.streaming.StreamResponse)]

            chunks[type(adapter).__name__] = asyncio.run(collect())
            assert server.requests[-1]["stream"] is True
    assert chunks["NativeChatAdapter"] == chunks["ChatAdapter"]
    assert "".join(chunks["ChatAdapter"]).strip() == "Paris is the capital of France."


def test_structured_outputs_are_requested_as_dspy_requests_them_and_built_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import json as json_module

    from dspy.adapters import json_adapter

    from dspyo3_core.testing.server import LMServer

    class Rated(dspy.Signature):
        question: str = dspy.InputField()
        answer: str = dspy.OutputField()
        confidence: float = dspy.OutputField()

    built: list[Any] = []
    real = json_adapter._get_structured_outputs_response_format
    monkeypatch.setattr(adapters, "_structured_format", lambda *a: built.append(a) or real(*a))
    bodies: dict[str, list[Any]] = {}
    with LMServer() as server:
        for adapter in (dspy.JSONAdapter(), NativeJSONAdapter()):
            lm = dspy.LM("openai/gpt-4o-mini", api_base=server.api_base, api_key="k", cache=False, num_retries=0)
            for question in ("2 + 2?", "3 + 3?"):
                server.script(json_module.dumps({"answer": "4", "confidence": 0.9}))
                with dspy.context(lm=lm, adapter=adapter):
                    assert dspy.Predict(Rated)(question=question).confidence == 0.9
            bodies[type(adapter).__name__] = [{k: v for k, v in r.items() if not k.startswith("_")}
                                             for r in server.requests[-2:]]
    assert bodies["NativeJSONAdapter"] == bodies["JSONAdapter"]
    assert bodies["NativeJSONAdapter"][0]["response_format"]["type"] == "json_schema"
    assert len(built) == 1, "the structured-output model was built once for the signature"


class _Canned(dspy.BaseLM):
    """An LM whose answer is given: the outputs list an adapter receives."""

    def __init__(self, outputs: list[Any]) -> None:
        super().__init__(model="canned", cache=False)
        self.outputs = outputs

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> list[Any]:
        return list(self.outputs)


@pytest.mark.filterwarnings("ignore:The 'prefix' argument:DeprecationWarning")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(completions(), st.integers(0, 3), st.booleans())
def test_whole_adapter_calls_equal_dspys(case: Any, shape: int, logprobs: bool) -> None:
    signature, completion = case
    outputs: list[Any] = [[completion], [completion, completion + "\nmore"], [""], [{"text": completion}]][shape]
    if logprobs and shape == 3:
        outputs[0]["logprobs"] = {"content": []}
    for stock, native in ((dspy.ChatAdapter(use_json_adapter_fallback=False),
                           NativeChatAdapter(use_json_adapter_fallback=False)),
                          (dspy.JSONAdapter(), NativeJSONAdapter())):
        expected = outcome(stock, _Canned(outputs), {}, signature, [], {})
        got = outcome(native, _Canned(outputs), {}, signature, [], {})
        # DSPy names the adapter class in its errors (type(self).__name__, as for any subclass of its own)
        got = tuple(part.replace(type(native).__name__, type(stock).__name__) for part in got)
        assert got == expected, type(native).__name__


def test_an_instance_override_stays_with_its_instance() -> None:
    signature = dspy.Signature("question -> answer")
    pirate = NativeChatAdapter()
    pirate.format_task_description = lambda sig: "TALK LIKE A PIRATE"  # type: ignore[method-assign]
    stock = dspy.ChatAdapter()
    stock.format_task_description = lambda sig: "TALK LIKE A PIRATE"  # type: ignore[method-assign]
    assert pirate.format(signature, [], {"question": "q"}) == stock.format(signature, [], {"question": "q"})
    plain = NativeChatAdapter().format(signature, [], {"question": "q"})
    assert plain == dspy.ChatAdapter().format(signature, [], {"question": "q"})
    assert "PIRATE" not in plain[0]["content"]


def test_the_kept_structured_output_schema_is_handed_out_fresh() -> None:
    from dspy.adapters.json_adapter import _get_structured_outputs_response_format

    class Rated(dspy.Signature):
        question: str = dspy.InputField()
        note: str | None = dspy.OutputField(default=None)

    class SchemaLM:
        supported_params = frozenset({"response_format"})
        supports_response_schema = True

    adapter = NativeJSONAdapter()
    expected = _get_structured_outputs_response_format(Rated, True).model_json_schema()
    for _ in range(2):
        kwargs: dict[str, Any] = {}
        adapter._prepare_response_format(SchemaLM(), kwargs, Rated)
        schema = kwargs["response_format"].model_json_schema()
        assert schema == expected
        schema["properties"]["note"].pop("default", None)  # what LiteLLM's strict-schema conversion does
        schema.clear()


def test_a_string_where_a_signature_belongs_fails_as_in_dspy() -> None:
    assert outcome(NativeChatAdapter().format, "question -> answer", [], {"question": "q"}) == \
        outcome(dspy.ChatAdapter().format, "question -> answer", [], {"question": "q"})
