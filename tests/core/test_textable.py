from __future__ import annotations

import pytest

from dspyo3_core.textable import render


def test_columns_align_and_the_last_one_runs_free() -> None:
    out = render(["name", "hooks"], [["core", "a, b"], ["production", "c"]]).splitlines()
    assert out == ["name        hooks", "──────────  ─────", "core        a, b", "production  c"]


def test_a_cell_never_spans_lines_and_a_short_row_is_refused() -> None:
    assert render(["x"], [["two\nlines\tand tabs"]]).splitlines()[2] == "two lines and tabs"
    with pytest.raises(ValueError, match="1 cells for 2 columns"):
        render(["a", "b"], [["only one"]])
