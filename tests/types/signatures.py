"""Signatures covering every type the IR supports (shared by the codegen and round-trip tests)."""

from __future__ import annotations

import datetime
import enum
from typing import Any, Literal, Optional

import dspy
import pydantic


class Color(str, enum.Enum):
    """A colour."""

    RED = "red"
    DARK_BLUE = "dark blue"


class Entity(pydantic.BaseModel):
    """A named thing."""

    name: str = pydantic.Field(description="surface form")
    type: Literal["person", "org"]
    salience: float
    aliases: Optional[list[str]] = None  # noqa: UP045 - the Optional spelling is part of what is tested


class Tree(pydantic.BaseModel):
    label: str
    children: list[Tree] = []


class Everything(dspy.Signature):
    """Exercise every supported type."""

    text: str = dspy.InputField(desc="the text")
    count: int = dspy.InputField()
    ratio: float = dspy.InputField()
    flag: bool = dspy.InputField()
    tags: list[str] = dspy.InputField()
    pair: tuple[int, str] = dspy.InputField()
    scores: dict[str, float] = dspy.InputField()
    maybe: Optional[int] = dspy.InputField()  # noqa: UP045
    when: datetime.datetime = dspy.InputField()
    day: datetime.date = dspy.InputField()
    color: Color = dspy.InputField()
    entity: Entity = dspy.OutputField()
    entities: list[Entity] = dspy.OutputField()
    mood: Literal["happy", "sad"] = dspy.OutputField()
    tree: Tree = dspy.OutputField()
    extra: Any = dspy.OutputField()
    type: str = dspy.OutputField(desc="a Rust keyword as a field name")
    maybe_entity: Optional[Entity] = dspy.OutputField()  # noqa: UP045


QA = dspy.Signature("question -> answer", "Answer questions with short factoid answers.")
