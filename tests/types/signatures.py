"""Signatures covering every type the IR supports (shared by the codegen and round-trip tests)."""

from __future__ import annotations

import datetime
import datetime as dt
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


class Node(pydantic.BaseModel):
    """A node that holds itself through a tuple (needs a Box in Rust)."""

    name: str
    pair: Optional[tuple[Node, int]] = None  # noqa: UP045


class String(pydantic.BaseModel):
    """A model named like a Rust type."""

    value: str


class other:
    class Tree(pydantic.BaseModel):
        a: int


class Awkward(dspy.Signature):
    """Names and values that are awkward in Rust: "quotes", back\\slashes,
        and indented lines that must not become doctests."""

    self_and_more: Literal["self", "café", 'say "hi"', "a-b", "1st", "A B", "a b"] = dspy.InputField()
    node: Node = dspy.InputField()
    string: String = dspy.InputField()
    trees: dict[str, Tree] = dspy.InputField()
    other_tree: other.Tree = dspy.InputField()
    when: dt.time = dspy.InputField()
    at: dt.datetime = dspy.InputField(desc="timezone-aware")
    datetime: str = dspy.OutputField(desc="a field named like a module")
    limit: Optional[int] = dspy.OutputField(default=5)  # noqa: UP045 - None must survive, not become 5
    models: tuple[Entity, Color] = dspy.OutputField()
