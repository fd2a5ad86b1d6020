"""What ``LMTransport`` turns into a JSON request body: a container holding itself, or nesting too deep for the
stack, raises ``ValueError`` in the calling process (each case runs in a child process, so a crash shows up as a
signal instead of killing the test run)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from dspyo3_native import LMTransport

CHILD = """
import sys
from dspyo3_native import LMTransport

transport = LMTransport("http://127.0.0.1:9/v1")
{build}
try:
    transport.request_body("m", messages)
except ValueError as error:
    print("ValueError:", error)
    sys.exit(0)
print("no error")
sys.exit(3)
"""

CASES = {
    "list_holding_itself": "inner = []\ninner.append(inner)\nmessages = [{'role': 'user', 'content': inner}]",
    "dict_holding_itself": "d = {}\nd['self'] = d\nmessages = [{'role': 'user', 'content': 'x', 'extra': d}]",
    "cycle_through_a_tuple": "l = []\nl.append((1, l))\nmessages = l",
    "200k_nested_lists": "v = 'x'\nfor _ in range(200_000):\n    v = [v]\nmessages = [{'role': 'user', 'content': v}]",
    "200k_nested_dicts": "v = 'x'\nfor _ in range(200_000):\n    v = {'k': v}\nmessages = [v]",
}


def run_child(build: str) -> subprocess.CompletedProcess[str]:
    code = CHILD.format(build=textwrap.dedent(build))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("case", sorted(CASES))
def test_unsendable_nesting_raises_value_error_instead_of_crashing(case: str) -> None:
    done = run_child(CASES[case])
    assert done.returncode >= 0, f"the child died of {signal.Signals(-done.returncode).name}: {done.stderr[-2000:]}"
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    message = done.stdout.lower()
    assert "circular reference" in message or "nested more than 512 levels" in message, message


def nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


def test_nesting_up_to_the_limit_is_sent() -> None:
    transport = LMTransport("http://127.0.0.1:9/v1")
    # messages (1) > message dict (2) > content: 510 lists = 512 containers on the path
    body = transport.request_body("m", [{"role": "user", "content": nested(510)}])
    assert body.count(b"[") >= 511
    with pytest.raises(ValueError, match="nested more than 512 levels"):
        transport.request_body("m", [{"role": "user", "content": nested(511)}])


def test_shared_but_acyclic_values_are_not_cycles() -> None:
    transport = LMTransport("http://127.0.0.1:9/v1")
    part = {"type": "text", "text": "hi"}
    parts = [part, part]
    body = transport.request_body("m", [{"role": "user", "content": parts}, {"role": "user", "content": parts}])
    assert body.count(b'"text":"hi"') == 4


def test_a_model_dump_returning_itself_is_a_cycle() -> None:
    class Loop:
        def model_dump(self) -> object:
            return [self]

    transport = LMTransport("http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="circular reference"):
        transport.request_body("m", [{"role": "user", "content": Loop()}])


def test_a_dict_changed_by_model_dump_while_read_is_not_a_panic() -> None:
    holder: dict[str, object] = {}

    class Grows:
        def model_dump(self) -> object:
            holder["late"] = "added while converting"
            return "x"

    holder["first"] = Grows()
    transport = LMTransport("http://127.0.0.1:9/v1")
    body = transport.request_body("m", [{"role": "user", "content": "hi", "extra": holder}])
    assert b'"first":"x"' in body
