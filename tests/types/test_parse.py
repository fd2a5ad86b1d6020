"""Prediction parsing: ChatAdapter sections, JSON and XML into typed fields; malformed answers; streaming JSON."""

from __future__ import annotations

import html
import html.entities
import re
import typing
from typing import Annotated, Literal, Optional

import dspy
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspyo3_core.testing import LMServer, chat_reply
from dspyo3_native import HTMLUnescaper
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


class Color(str, __import__("enum").Enum):
    RED = "red"
    BLUE = "blue"


class Loose(dspy.Signature):
    """Fields whose text LMs write in many ways."""

    question: str = dspy.InputField()
    maybe_text: str | None = dspy.OutputField()
    maybe_count: int | None = dspy.OutputField()
    color: Color = dspy.OutputField()
    mood: Literal["pos", "neg"] = dspy.OutputField()
    code: str = dspy.OutputField()


@pytest.mark.parametrize(("field", "text", "value"), [
    ("maybe_text", "42", "42"),
    ("maybe_count", "None", None),
    ("maybe_count", "null", None),
    ("color", "RED", Color.RED),
    ("color", "blue", Color.BLUE),
    ("mood", "'pos'", "pos"),
    ("mood", "Literal['neg']", "neg"),
])
def test_loose_spellings_match_dspy(field: str, text: str, value: object) -> None:
    values = {"maybe_text": "x", "maybe_count": "1", "color": "red", "mood": "pos", "code": "c", field: text}
    answer = "\n\n".join(f"[[ ## {k} ## ]]\n{v}" for k, v in values.items())
    assert parse_output(answer, Loose, "chat")[field] == value
    assert dspy.ChatAdapter().parse(Loose, answer)[field] == value, "same as DSPy's own parser"


def test_xml_attributes_entities_and_format_detection() -> None:
    xml = ('<maybe_text kind="x">a &amp; b</maybe_text><maybe_count>2</maybe_count><color>red</color>'
           "<mood>neg</mood><code>x</code>")
    assert parse_output(xml, Loose)["maybe_text"] == "a & b"
    as_json = ('{"maybe_text": "use <maybe_text> tags", "maybe_count": 1, "color": "red", "mood": "pos", '
               '"code": "c"} and some prose with a } brace')
    assert parse_output(as_json, Loose)["maybe_text"] == "use <maybe_text> tags"


@pytest.mark.parametrize(("text", "fields"), [
    ('{"answer": "x", "place": {"answer": 1, "city": "P', {"answer": "x"}),
    ('{"tags": ["tags", "b:", "c', {}),
    ('{"tags": ["tags", "b:", "c"], "answer": "d', {"tags": ["tags", "b:", "c"], "answer": "d"}),
])
def test_partial_json_is_not_fooled_by_repeated_keys(text: str, fields: dict[str, object]) -> None:
    assert parse_partial(text, Answer) == fields


def test_the_json_fallback_of_the_strict_chat_adapter_is_strict_too() -> None:
    with LMServer() as server:
        lm = dspy.LM("openai/test", api_base=server.api_base, api_key="k", cache=False, num_retries=0)
        server.script(CHAT.replace("[[ ## count ## ]]\n3", "[[ ## count ## ]]\nthree"),
                      '{"answer": "x", "count": 3, "score": 0.5, "tags": ["a", "b",], "mood": "happy", '
                      '"place": {"city": "P", "population": 1}}')
        with dspy.context(lm=lm, adapter=StrictChatAdapter()), pytest.raises(OutputParseError):
            dspy.Predict(Answer)(question="q")
        assert len(server.requests) == 2, "the fallback ran, and rejected the sloppy JSON"


MB = 1_000_000


def _repeat(unit: str, size: int = MB) -> str:
    return unit * (size // len(unit) + 1)


DISTINCT_REFERENCES = "".join(f"&#{n};" for n in range(65, 65 + MB // 9))


@pytest.mark.parametrize(("text", "fmt", "expected"), [
    # a megabyte of unclosed tags before the answer: the first opening tag runs to the first closing one
    (_repeat("<answer>") + XML, "auto", {**EXPECTED, "answer": _repeat("<answer>") + "Paris"}),
    (_repeat("<answer ") + XML, "xml", EXPECTED),  # an opening tag whose ">" is far away
    (XML.replace("<answer>Paris</answer>", "") + _repeat("<answer>"), "auto", None),  # tags that never close
    (XML.replace("<answer>Paris</answer>", "") + _repeat("<answer "), "xml", None),
    (XML.replace("</place>", "") + _repeat("</answer>"), "xml", None),
    (_repeat("\n") + CHAT, "chat", EXPECTED),  # a megabyte of blank lines
    (CHAT + _repeat("\n"), "chat", EXPECTED),
    (CHAT + _repeat("\n \t"), "auto", EXPECTED),
    (_repeat("\n") + "x", "chat", None),
    (_repeat("\n \t") + "\n" + CHAT, "auto", EXPECTED),
    (_repeat("[[ ## answer ## ]]\n") + CHAT, "chat", {**EXPECTED, "answer": ""}),  # the first header wins
    (_repeat("[[ ## answer ## \n") + CHAT, "chat", EXPECTED),  # a megabyte of broken headers
    (_repeat("x [[ ## count ## ]] ") + "\n" + CHAT, "chat", EXPECTED),  # one huge line, no header at its start
    (_repeat("x [[ ## count ## ]] ") + CHAT, "chat", None),
    ("```json\n" + _repeat("```x"), "json", None),  # backticks that never close the fence
    ("```" + _repeat("`"), "json", None),
    ('```json\n{"answer": "x"}' + _repeat("\n``` x"), "json", None),
    (_repeat("{"), "json", None),
    ('{"answer": "' + _repeat("a"), "json", None),
    # a megabyte of character references: numeric, named, distinct, one of thousands of digits
    (XML.replace("Paris", _repeat("&#x41;"), 1), "xml", {**EXPECTED, "answer": "A" * (MB // 6 + 1)}),
    (XML.replace("Paris", _repeat("&eacute;&#233;"), 1), "xml", {**EXPECTED, "answer": "éé" * (MB // 14 + 1)}),
    (XML.replace("Paris", DISTINCT_REFERENCES, 1), "xml", {**EXPECTED, "answer": html.unescape(DISTINCT_REFERENCES)}),
    (XML.replace("Paris", "&#" + _repeat("9") + ";", 1), "xml", {**EXPECTED, "answer": "\ufffd"}),
])
def test_hostile_answers_parse_or_fail_cleanly(text: str, fmt: str, expected: dict[str, object] | None) -> None:
    """Megabyte answers built to make a backtracking parser slow give the plain result or a clean OutputParseError
    (in linear time: the test session's timeout catches a quadratic parser, which takes hours on these)."""
    if expected is None:
        with pytest.raises(OutputParseError) as info:
            parse_output(text, Answer, fmt)
        assert info.value.raw == text
    else:
        assert parse_output(text, Answer, fmt) == expected
        if "[[ ##" in text:
            assert dspy.ChatAdapter().parse(Answer, text) == expected, "the same sections as DSPy's own parser"


class _Scans:
    """Characters examined by the scans the parser makes: each ``find``/``split``/``count`` on the answer (a
    ``_CountedText``) and each search, match, split or sub of the parser's compiled patterns, counted from the
    position the scan starts at to where it stops (the end of the text unless ``find`` hits). Slices of the
    answer are plain ``str`` and not counted, but every pattern call on them is."""

    examined = 0


class _CountedText(str):
    def find(self, sub: str, start: typing.SupportsIndex | None = None,  # type: ignore[override]
             end: typing.SupportsIndex | None = None) -> int:
        at = super().find(sub, start, end)
        begin = 0 if start is None else int(start)
        _Scans.examined += (at + len(sub) if at != -1 else len(self)) - begin
        return at

    def split(self, sep: str | None = None, maxsplit: typing.SupportsIndex = -1) -> list[str]:  # type: ignore[override]
        _Scans.examined += len(self)
        return super().split(sep, maxsplit)


class _CountedPattern:
    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern

    def _scan(self, method: str, *args: typing.Any) -> typing.Any:
        string = args[1] if method == "sub" else args[0]
        position = args[1] if method in ("search", "match") and len(args) > 1 else 0
        _Scans.examined += len(string) - position
        return getattr(self.pattern, method)(*args)

    def search(self, *args: typing.Any) -> typing.Any:
        return self._scan("search", *args)

    def match(self, *args: typing.Any) -> typing.Any:
        return self._scan("match", *args)

    def split(self, *args: typing.Any) -> typing.Any:
        return self._scan("split", *args)

    def sub(self, *args: typing.Any) -> typing.Any:
        return self._scan("sub", *args)


@pytest.fixture
def examined(monkeypatch: pytest.MonkeyPatch) -> typing.Callable[[str, str], int]:
    """``examined(text, fmt)``: the characters the parser's scans examine while it parses ``text``."""
    from dspyo3_types import parse

    for name, value in vars(parse).copy().items():
        if isinstance(value, re.Pattern):
            monkeypatch.setattr(parse, name, _CountedPattern(value))
    opening = parse._xml_open
    monkeypatch.setattr(parse, "_xml_open", lambda name: _CountedPattern(opening(name)))

    def count(text: str, fmt: str) -> int:
        _Scans.examined = 0
        try:
            parse_output(_CountedText(text), Answer, fmt)
        except OutputParseError:
            pass
        return _Scans.examined

    return count


@pytest.mark.parametrize(("make", "fmt"), [
    (lambda n: XML.replace("<answer>Paris</answer>", "") + "<answer>" * n, "auto"),
    (lambda n: "<answer>" * n + XML, "xml"),
    (lambda n: "<answer " * n + XML, "xml"),
    (lambda n: XML.replace("</place>", "") + "</answer>" * n, "xml"),
    (lambda n: XML.replace("Paris", "&#x41;" * n, 1), "xml"),
    (lambda n: XML.replace("Paris", "".join(f"&#{i};x" for i in range(n)), 1), "xml"),
    (lambda n: XML.replace("Paris", "&eacute;" * n + "&#233;x" * n, 1), "xml"),
    (lambda n: "\n" * n + CHAT, "chat"),
    (lambda n: "[[ ## answer ## ]]\n" * n + CHAT, "chat"),
    (lambda n: "[[ ## answer ## \n" * n + CHAT, "auto"),
    (lambda n: "```json\n" + "```x" * n + "\n```", "json"),
    (lambda n: "```json\n" + JSON.replace('"b"]', '"b"' + ', "c"' * n + "]") + "\n```", "json"),
])
def test_hostile_answers_are_scanned_a_bounded_number_of_times(
        examined: typing.Callable[[str, str], int], make: typing.Callable[[int], str], fmt: str) -> None:
    """Twice the hostile text costs at most about twice the characters examined (a parser that rescans the rest
    of the answer from each tag, header or reference examines four times as many): counted, not timed."""
    small, large = examined(make(2_000), fmt), examined(make(4_000), fmt)
    assert 0 < large <= 2.2 * small, (small, large)


def test_xml_takes_the_first_opening_tag_and_the_first_closing_tag_after_it() -> None:
    xml = XML.replace("<answer>Paris</answer>", '<answer>draft<answer kind="final">Paris</answer></answer>')
    assert parse_output(xml, Answer, "xml")["answer"] == 'draft<answer kind="final">Paris'
    xml = XML.replace("<answer>Paris</answer>", "<answer\n>Paris</answer><answer>Rome</answer>")
    assert parse_output(xml, Answer, "xml")["answer"] == "Paris"
    with pytest.raises(OutputParseError, match="`answer`"):  # an opening tag with no closing tag after it
        parse_output(XML.replace("</answer>", "") + "<answer>", Answer, "xml")


@pytest.mark.parametrize(("value", "expected"), [
    ("```json\n[1]\n```", [1]), ("```[1]```", [1]), ("```\n[1]```", [1]), ("[1]", [1]),
    ("``````", None), ("```", None), ("`````", None), ("```json\n[1]\n``` and more", None),
])
def test_code_fences(value: str, expected: list[int] | None) -> None:
    """A field's value that is one code fence is read from inside it; a text that only starts or ends like one is
    read as it is (here: not a list)."""
    answer = f"[[ ## data ## ]]\n{value}\n\n[[ ## text ## ]]\nx"
    if expected is None:
        with pytest.raises(OutputParseError, match="field `data`"):
            parse_output(answer, Nested, "chat")
    else:
        assert parse_output(answer, Nested, "chat") == {"data": expected, "text": "x"}
        whole = value.replace("[1]", '{"data": [1], "text": "x"}')  # a whole JSON answer in the same fence
        assert parse_output(whole, Nested, "json") == {"data": expected, "text": "x"}


class Nested(dspy.Signature):
    """Fields that hold JSON."""

    question: str = dspy.InputField()
    data: list[object] = dspy.OutputField()
    text: str = dspy.OutputField()


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(("text", "fmt", "field"), [
    (f"[[ ## data ## ]]\n{DEEP}\n\n[[ ## text ## ]]\nx", "chat", "data"),
    (f"<data>{DEEP}</data><text>x</text>", "xml", "data"),
    (f'{{"data": [], "text": {DEEP}}}', "json", None),
    ('{"data": ' * 100_000, "json", None),
])
def test_json_nested_too_deeply_is_a_parse_error_naming_the_field(text: str, fmt: str, field: str | None) -> None:
    with pytest.raises(OutputParseError, match="nested too deeply") as info:
        parse_output(text, Nested, fmt)
    assert info.value.field == field
    if field:
        assert f"field `{field}`" in str(info.value)
    shallow = text.replace(DEEP, "[[1]]")
    if shallow != text:
        assert parse_output(shallow, Nested, fmt)["data"] in ([[1]], [])


def test_partial_json_nested_too_deeply_reads_what_it_can() -> None:
    assert parse_partial('{"text": "x", "data": ' + "[" * 100_000, Nested) == {}


class Maybe(dspy.Signature):
    """Output fields that may be left out."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()
    count: int | None = dspy.OutputField()
    city: Optional[str] = dspy.OutputField()  # noqa: UP045 - the typing spelling is what users write too
    tags: Annotated[list[str] | None, "note"] = dspy.OutputField()
    score: float | None = dspy.OutputField(default=0.5)


@pytest.mark.parametrize(("text", "fmt"), [
    ("[[ ## answer ## ]]\nParis", "chat"), ('{"answer": "Paris"}', "json"), ("<answer>Paris</answer>", "xml"),
])
def test_a_missing_optional_output_field_is_none_as_in_dspy(text: str, fmt: str) -> None:
    expected = {"answer": "Paris", "count": None, "city": None, "tags": None, "score": 0.5}
    assert parse_output(text, Maybe, fmt) == expected
    if fmt != "xml":
        theirs = dspy.ChatAdapter() if fmt == "chat" else dspy.JSONAdapter()
        assert theirs.parse(Maybe, text) == expected, "the same as DSPy's own parser"


def test_a_missing_required_field_still_fails_and_optional_ones_are_not_listed_as_missing() -> None:
    with pytest.raises(OutputParseError, match="`answer`") as info:
        parse_output('{"count": 3}', Maybe, "json")
    assert "missing: answer;" in str(info.value)
    with pytest.raises(OutputParseError, match="`count`"):  # present but wrong is still an error
        parse_output('{"answer": "x", "count": "many"}', Maybe, "json")


@pytest.mark.parametrize("value", ["a &amp; b &lt;c&gt; &quot;d&quot; &apos;e&apos;", "&amp;lt; &amp;amp;",
                                   "&amp;#65; &#65; &eacute;", "&lt", "a & b", "&amp", "&AMP; &amp;"])
def test_xml_entities_decode_like_html_unescape(value: str) -> None:
    assert parse_output(XML.replace("Paris", value, 1), Answer, "xml")["answer"] == html.unescape(value)


REFERENCE_PARTS = ["&", "#", "x", "X", ";", "0", "00", "65", "9", "fF", "d800", "80", "9f", "fffe", "10ffff", "110000",
                   "1114111", "1114112", "amp", "lt", "eacute", "ampx", "notin", "not", "AElig", "Tab", " ", "\n", "é"]


@given(st.lists(st.sampled_from(REFERENCE_PARTS) | st.text(alphabet="&#;xX09afAF lt", max_size=6), max_size=30),
       st.sampled_from([1, 3, 20]))
@settings(max_examples=400, deadline=None)
def test_character_references_decode_like_html_unescape(parts: list[str], copies: int) -> None:
    """Numeric (decimal, hex, out of range, surrogates, C1 controls, noncharacters) and named references, with and
    without ";", alone, repeated or among other text: the same text as html.unescape."""
    value = "".join(parts) * copies
    assert parse_output(XML.replace("Paris", value, 1), Answer, "xml")["answer"] == html.unescape(value.strip())


@pytest.mark.parametrize("form", ["&#{n};", "&#X{n:04X}"])
def test_every_code_point_decodes_like_html_unescape(form: str) -> None:
    numbers = [*range(0x110000), 0x110000, 0x10FFFF + 2, 0xFFFFFFF]
    value = "".join(form.format(n=n) for n in numbers)
    assert parse_output(XML.replace("Paris", value, 1), Answer, "xml")["answer"] == html.unescape(value)


HTML5_NAMES = sorted(html.entities.html5)
REFERENCE_PIECES = (st.sampled_from(["&", "&", "#", ";", "x", "X", "&#", "&#x", " ", "\t", "\n", "\r", "\x0c", "<", "é",
                                     "\ud800", "\udfff", "\U0001f600", "0" * 12])
                    | st.text(alphabet="0123456789abcdefABCDEF", min_size=1, max_size=9)
                    | st.sampled_from(HTML5_NAMES)
                    | st.sampled_from(HTML5_NAMES).map(lambda name: name.rstrip(";") + "x")
                    | st.sampled_from(HTML5_NAMES).map(lambda name: name[:-2])
                    | st.text(max_size=4))


@given(st.lists(REFERENCE_PIECES, max_size=40))
@settings(max_examples=600, deadline=None)
def test_native_unescaper_decodes_random_mixes_like_html_unescape(parts: list[str]) -> None:
    """Random mixes of text, "&", "#", ";", digits, HTML5 names (whole, cut short, run on), control characters,
    non-ASCII and lone surrogates: the native decoder and the XML parser give html.unescape's text."""
    value = "".join(parts)
    unescaper = HTMLUnescaper(html.entities.html5)
    assert unescaper.unescape(value) == html.unescape(value)
    assert parse_output(XML.replace("Paris", value, 1), Answer, "xml")["answer"] == html.unescape(value.strip())


def test_native_unescaper_uses_the_table_it_is_given() -> None:
    unescaper = HTMLUnescaper({"hello;": "hi", "ab": "X"})
    assert len(unescaper) == 2
    assert unescaper.unescape("&hello; &abc &amp; &#65;") == "hi Xc &amp; A"
    text = "no references here"
    assert unescaper.unescape(text) is text


def test_a_megabyte_of_distinct_references_decodes_like_html_unescape() -> None:
    """Distinct numbers and names (no decoded piece repeats), long enough to be decoded without the GIL."""
    value = "".join(f"&#{n};&amp{n};&{name}" for n, name in zip(range(65, 60_000), HTML5_NAMES * 30, strict=False))
    assert parse_output(XML.replace("Paris", value, 1), Answer, "xml")["answer"] == html.unescape(value)


def test_a_reference_of_thousands_of_digits_is_out_of_range_not_an_error() -> None:
    """html.unescape raises ValueError past 4300 decimal digits; such a number is out of range: U+FFFD."""
    for reference, char in [("&#" + "1" * 5000 + ";", "\ufffd"), ("&#" + "0" * 5000 + "65;", "A"),
                            ("&#x" + "0" * 5000 + "41", "A"), ("&#x" + "f" * 5000 + ";", "\ufffd")]:
        assert parse_output(XML.replace("Paris", reference, 1), Answer, "xml")["answer"] == char
