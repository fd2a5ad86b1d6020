"""The built-in tools: the calculator refuses pathological expressions before computing them; http_get refuses
non-http(s) URLs, also after a redirect."""

from __future__ import annotations

import ast
import http.server
import math
import operator
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dspyo3_agents import builtin
from dspyo3_agents.builtin import calculator, http_get


@pytest.mark.parametrize("expression", [
    "(((9**99)**99)**99)**9",
    "((9**99)**99)**99",
    "2**9999 * 2**9999 * 2**9999",
    "10**10001",
    "(2**5000) ** 3",
    "9.0 ** 99999",
    "1" * 501,
])
def test_calculator_refuses_huge_results_before_computing_them(expression: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Every power or product the calculator starts has a result within MAX_BITS (the limit is checked first)."""

    def watched(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def run(left: Any, right: Any) -> Any:
            if isinstance(left, int) and isinstance(right, int):
                if op is operator.pow and right > 0 and abs(left) > 1:
                    bits = math.floor(right * math.log2(abs(left))) + 1
                else:
                    bits = abs(left).bit_length() + abs(right).bit_length()
                # checked before computing: without the limit the test fails here instead of burning CPU
                assert bits <= builtin.MAX_BITS + 1, f"the calculator started computing a {bits}-bit number"
            return op(left, right)
        return run

    monkeypatch.setitem(builtin._BINARY, ast.Pow, watched(operator.pow))
    monkeypatch.setitem(builtin._BINARY, ast.Mult, watched(operator.mul))
    with pytest.raises(ValueError, match=r"bits|not allowed|too large|longer than"):
        calculator(expression)


def test_calculator_still_computes() -> None:
    assert calculator("(3 + 4) * 12.5") == 87.5
    assert calculator("2 ** 100") == 2**100
    assert calculator("9.0 ** 99") == pytest.approx(9.0**99)
    assert calculator("sqrt(16) + 2 ** -2") == 4.25


@pytest.fixture
def redirector() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/ftp":
                self.send_response(302)
                self.send_header("Location", "ftp://127.0.0.1/secret")  # urllib alone would follow ftp
                self.end_headers()
            elif self.path == "/hop":
                self.send_response(302)
                self.send_header("Location", "/ok")
                self.end_headers()
            else:
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"fine")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_get_refuses_other_schemes_also_after_redirects(redirector: str) -> None:
    with pytest.raises(ValueError, match="only http:// and https://"):
        http_get("file:///etc/passwd")
    with pytest.raises(ValueError, match="only http:// and https://"):
        http_get("FTP://example.com/x")
    with pytest.raises(ValueError, match=r"only http:// and https:// URLs can be fetched, not 'ftp://127\.0\.0\.1/secret'"):
        http_get(f"{redirector}/ftp")
    assert http_get(f"{redirector}/hop") == "fine"
