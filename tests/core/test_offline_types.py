"""The offline LM writes a value DSPy's adapters accept for every output annotation they accept."""

from __future__ import annotations

import datetime
import enum
import uuid
from typing import Any, Literal, Optional, Union

import dspy
import pydantic
import pytest

from dspyo3_core.offline import OfflineLM

QUESTION = "On 2024-05-17 which red crates went to https://depot.example/in, in 3 boxes?"


class Inner(pydantic.BaseModel):
    count: int
    tags: list[str]


class Outer(pydantic.BaseModel):
    title: str
    inner: Inner
    history: list[Inner]
    score: float | None = None


class Bounded(pydantic.BaseModel):
    stars: int = pydantic.Field(ge=1, le=5)
    short: str = pydantic.Field(max_length=10)


class Colour(enum.Enum):
    BLUE = "blue"
    RED = "red"


CASES: dict[str, tuple[Any, Any]] = {
    "tuple[int, str]": (tuple[int, str], lambda v: v == (3, QUESTION)),
    "tuple[float, bool, int]": (tuple[float, bool, int], lambda v: v == (3.0, True, 3)),
    "tuple[str, ...]": (tuple[str, ...], lambda v: isinstance(v, tuple) and len(v) == 1),
    "list[tuple[int, int]]": (list[tuple[int, int]], lambda v: v == [(3, 3)]),
    "list[int]": (list[int], lambda v: v == [3]),
    "list[float]": (list[float], lambda v: v == [3.0]),
    "list[Literal]": (list[Literal["blue", "red"]], lambda v: v == ["red"]),
    "dict[str, float]": (dict[str, float], lambda v: isinstance(v, dict)),
    "dict[str, list[int]]": (dict[str, list[int]], lambda v: isinstance(v, dict)),
    "Optional[int]": (Optional[int], lambda v: v == 3),  # noqa: UP045  (the spelling users write)
    "int | None": (Union[int, None], lambda v: v == 3),
    "Union[int, str]": (Union[int, str], lambda v: v == 3),
    "Literal[str]": (Literal["blue", "red"], lambda v: v == "red"),
    "Literal[int]": (Literal[1, 2], lambda v: v == 1),
    "Enum": (Colour, lambda v: v is Colour.RED),
    "nested model": (Outer, lambda v: isinstance(v, Outer) and v.inner.count == 3 and len(v.history) == 1),
    "Optional[model]": (Optional[Outer], lambda v: isinstance(v, Outer)),  # noqa: UP045
    "list[model]": (list[Inner], lambda v: len(v) == 1 and isinstance(v[0], Inner)),
    "constrained model": (Bounded, lambda v: v.stars == 3 and len(v.short) <= 10),
    "datetime": (datetime.datetime, lambda v: v == datetime.datetime(2024, 5, 17)),
    "date": (datetime.date, lambda v: v == datetime.date(2024, 5, 17)),
    "uuid": (uuid.UUID, lambda v: isinstance(v, uuid.UUID)),
    "set[str]": (set[str], lambda v: isinstance(v, set) and len(v) == 1),
}


@pytest.mark.parametrize("adapter", [dspy.ChatAdapter(), dspy.JSONAdapter()], ids=["chat", "json"])
@pytest.mark.parametrize("name", list(CASES))
def test_output_annotation_parses(name: str, adapter: Any) -> None:
    annotation, check = CASES[name]
    signature = dspy.Signature({"question": (str, dspy.InputField()), "out": (annotation, dspy.OutputField())},
                               "Answer the question.")
    with dspy.context(lm=OfflineLM(), adapter=adapter):
        value = dspy.Predict(signature)(question=QUESTION).out
    assert check(value), value


def test_dates_fall_back_to_the_epoch_when_the_prompt_has_none() -> None:
    signature = dspy.Signature({"question": (str, dspy.InputField()),
                                "when": (datetime.date, dspy.OutputField())}, "Answer.")
    with dspy.context(lm=OfflineLM()):
        assert dspy.Predict(signature)(question="When?").when == datetime.date(1970, 1, 1)
