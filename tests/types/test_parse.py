"""Prediction parsing: ChatAdapter sections, JSON and XML into typed fields; malformed answers; streaming JSON."""

from __future__ import annotations

from typing import Literal

import dspy
import pydantic
import pytest

from dspyo3_core.testing import LMServer, chat_reply
from dspyo3_types.parse import OutputParseError, StrictChatAdapter, StrictJSONAdapter, parse_output, parse_partial


class Place(pydantic.BaseModel):
    city: str
    population: int


class Answer(dspy.Signature):
    """Answer with structure."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()
    count: int = dspy.OutputField()
    score: float = dspy.OutputField()
    tags: list[str] = dspy.OutputField()
    mood: Literal["happy", "sad"] = dspy.OutputField()
    place: Place = dspy.OutputField()
    note: str = dspy.OutputField(default="none")


EXPECTED = {"answer": "Paris", "count": 3, "score": 0.5, "tags": ["a", "b"], "mood": "happy",
            "place": Place(city="Paris", population=2_100_000), "note": "none"}
CHAT = chat_reply(answer="Paris", count=3, score=0.5, tags=["a", "b"], mood="happy",
                  place={"city": "Paris", "population": 2100000})
JSON = ('```json\n{"answer": "Paris", "count": "3", "score": 0.5, "tags": ["a", "b"], "mood": "happy", '
        '"place": {"city": "Paris", "population": 2100000}}\n```')
XML = ('<answer>Paris</answer><count>3</count><score>0.5</score><tags>["a", "b"]</tags><mood>happy</mood>'
       '<place>{"city": "Paris", "population": 2100000}</place>')


@pytest.mark.parametrize(("text", "fmt"), [(CHAT, "chat"), (JSON, "json"), (XML, "xml"), (CHAT, "auto"),
                                           (JSON, "auto"), (XML, "auto")])
def test_every_format_gives_typed_fields(text: str, fmt: str) -> None:
    assert parse_output(text, Answer, fmt) == EXPECTED


def test_same_result_as_dspys_own_parsers() -> None:
    assert dspy.ChatAdapter().parse(Answer, CHAT) == parse_output(CHAT, Answer, "chat")
    assert dspy.JSONAdapter().parse(Answer, JSON) == parse_output(JSON, Answer, "json")


@pytest.mark.parametrize(("text", "field", "expected", "received", "says"), [
    (CHAT.replace("[[ ## count ## ]]\n3", "[[ ## count ## ]]\nthree"), "count", "int", "three", "valid integer"),
    (CHAT.replace("happy", "angry"), "mood", "Literal['happy', 'sad']", "angry", "'happy' or 'sad'"),
    (CHAT.replace('"population": 2100000', '"population": "many"'), "place", "Place", None, "population"),
    (CHAT.split("[[ ## tags ## ]]")[0], "tags", "list[str]", None, "missing"),  # truncated answer
])
def test_malformed_answers_name_field_type_and_value(text: str, field: str, expected: str, received: str | None,
                                                     says: str) -> None:
    with pytest.raises(OutputParseError) as info:
        parse_output(text, Answer, "chat")
    err = info.value
    assert (err.field, err.expected) == (field, expected)
    if received is not None:
        assert err.received.strip() == received
    assert says in str(err) and f"`{field}`" in str(err)
    assert err.raw == text and err.lm_response == text, "the raw answer is kept"
    assert isinstance(err, dspy.utils.exceptions.AdapterParseError), "DSPy's fallbacks still apply"


def test_unreadable_json_is_an_error_not_a_crash() -> None:
    for text in ['{"answer": "Paris", "count": ', "no json here", "[1, 2]"]:
        with pytest.raises(OutputParseError):
            parse_output(text, Answer, "json")


@pytest.mark.parametrize(("text", "fields"), [
    ("", {}),
    ('{"answer": "Pa', {"answer": "Pa"}),
    ('{"answer": "Paris", "count": 1', {"answer": "Paris"}),
    ('{"answer": "Paris", "count": 12,', {"answer": "Paris", "count": 12}),
    ('{"answer": "Paris", "count": 12, "tags": ["a", "b', {"answer": "Paris", "count": 12}),
    ('{"answer": "Paris", "count": 12, "tags": ["a"], "place": {"city": "Par',
     {"answer": "Paris", "count": 12, "tags": ["a"]}),
    ('{"answer": "a \\"quoted\\" word", "mood": "sad"}', {"answer": 'a "quoted" word', "mood": "sad"}),
])
def test_partial_json_while_streaming(text: str, fields: dict[str, object]) -> None:
    assert parse_partial(text, Answer) == fields


def test_strict_adapters_under_dspy() -> None:
    with LMServer() as server:
        lm = dspy.LM("openai/test", api_base=server.api_base, api_key="k", cache=False, num_retries=0)
        program = dspy.Predict(Answer)
        server.script(CHAT)
        with dspy.context(lm=lm, adapter=StrictChatAdapter()):
            result = program(question="Capital of France?")
        assert result.place == EXPECTED["place"] and result.count == 3
        server.script(CHAT.replace("happy", "angry"))
        strict = StrictChatAdapter(use_json_adapter_fallback=False)
        with dspy.context(lm=lm, adapter=strict), pytest.raises(OutputParseError, match="`mood`: expected Literal"):
            program(question="Capital of France?")
        server.script(JSON)
        with dspy.context(lm=lm, adapter=StrictJSONAdapter()):
            assert program(question="q").tags == ["a", "b"]
