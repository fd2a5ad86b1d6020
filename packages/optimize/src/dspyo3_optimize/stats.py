"""Paired statistics for comparing two programs scored on the same examples, and quality gates over them.

* :func:`bootstrap_ci` — a percentile bootstrap confidence interval of a mean;
* :func:`paired_bootstrap` — the same for the mean paired difference ``b - a``;
* :func:`mcnemar` — McNemar's test for 0/1 scores (exact binomial below 25 discordant pairs, else chi-square with
  continuity correction);
* :func:`paired_t`, :func:`wilcoxon` — SciPy's paired t-test and Wilcoxon signed-rank test for other metrics;
* :func:`compare` — picks the test (McNemar when every score is 0 or 1, else paired t, or Wilcoxon on request)
  and returns a :class:`Comparison`;
* :func:`parse_gates` / :func:`check_gates` — quality gates such as ``"delta>0.02,p<0.05,n>=100"``.

A p-value that cannot be computed (fewer than 2 pairs, or paired differences that are all equal but not zero, where
the t statistic is undefined) is NaN, with the reason in ``note``; a NaN p-value fails every gate on ``p``.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # numpy is imported where it is used: importing this module (and the CLI) stays cheap
    import numpy as np

Test = Literal["auto", "mcnemar", "t", "wilcoxon"]
TESTS: tuple[str, ...] = ("auto", "mcnemar", "t", "wilcoxon")
EXACT_MCNEMAR_BELOW = 25
"""McNemar uses the exact binomial test when there are fewer discordant pairs than this."""
BOOTSTRAP_CHUNK_ELEMENTS = 2_000_000
"""Resample indices drawn at once by :func:`bootstrap_ci` (at most 1,000 resamples per chunk): memory stays at
~32 MB whatever the sample size, and the draws (hence the interval) are the same as drawing them all at once."""


class StatsError(ValueError):
    """The scores cannot be compared or bootstrapped (empty, or not paired); the message says why."""


def _scipy_stats() -> Any:
    """``scipy.stats`` (imported on first use; SciPy ships no type information)."""
    import importlib

    return importlib.import_module("scipy.stats")


def _pair(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    import numpy as np

    if len(a) != len(b):
        raise StatsError(f"paired scores need the same examples: got {len(a)} scores for A and {len(b)} for B")
    if len(a) == 0:
        raise StatsError("no scores to compare: the dataset is empty")
    return np.asarray(a, dtype=float), np.asarray(b, dtype=float)


def bootstrap_ci(scores: Sequence[float], *, confidence: float = 0.95, resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``scores`` (deterministic for a given ``seed``)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    import numpy as np

    values = np.asarray(scores, dtype=float)
    if values.size == 0:
        raise StatsError("no scores: cannot bootstrap an empty sample")
    rng = np.random.default_rng(seed)
    n = int(values.size)
    rows = max(1, min(1000, BOOTSTRAP_CHUNK_ELEMENTS // n))
    means = np.empty(resamples, dtype=float)
    for start in range(0, resamples, rows):  # row by row from one generator: the same draws as one big matrix
        count = min(rows, resamples - start)
        idx = rng.integers(0, n, size=(count, n))
        means[start:start + count] = values[idx].mean(axis=1)
        del idx
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95, resamples: int = 10_000,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean paired difference ``mean(b - a)`` and its percentile bootstrap interval ``(delta, low, high)``.

    Examples are resampled as pairs, so the interval accounts for both programs seeing the same inputs.
    """
    xa, xb = _pair(a, b)
    diff = xb - xa
    low, high = bootstrap_ci(diff.tolist(), confidence=confidence, resamples=resamples, seed=seed)
    return float(diff.mean()), low, high


@dataclass(frozen=True)
class TestResult:
    """A significance test's outcome: its name, statistic and two-sided p-value."""

    test: str
    statistic: float
    p_value: float
    note: str = ""


def mcnemar(a: Sequence[float], b: Sequence[float], *, exact: bool | None = None) -> TestResult:
    """McNemar's test on paired 0/1 outcomes.

    ``b01`` counts examples A got wrong and B right, ``b10`` the reverse. With ``exact`` (default: fewer than
    :data:`EXACT_MCNEMAR_BELOW` discordant pairs) the p-value is the two-sided exact binomial test of ``b01`` out of
    ``b01 + b10`` at 1/2; otherwise the chi-square statistic with continuity correction,
    ``(|b01 - b10| - 1)^2 / (b01 + b10)``, on one degree of freedom.
    """
    import numpy as np

    sps = _scipy_stats()

    xa, xb = _pair(a, b)
    if not np.all(np.isin(xa, (0.0, 1.0))) or not np.all(np.isin(xb, (0.0, 1.0))):
        raise StatsError("McNemar's test needs 0/1 scores; use test='t' or 'wilcoxon' for other metrics")
    b01 = int(np.sum((xa == 0) & (xb == 1)))
    b10 = int(np.sum((xa == 1) & (xb == 0)))
    n = b01 + b10
    if n == 0:
        return TestResult("mcnemar-exact", 0.0, 1.0)
    if exact is None:
        exact = n < EXACT_MCNEMAR_BELOW
    if exact:
        p = float(sps.binomtest(min(b01, b10), n, 0.5, alternative="two-sided").pvalue)
        return TestResult("mcnemar-exact", float(min(b01, b10)), min(1.0, p))
    chi2 = (abs(b01 - b10) - 1) ** 2 / n
    return TestResult("mcnemar-chi2", float(chi2), float(sps.chi2.sf(chi2, 1)))


def paired_t(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Paired (dependent samples) t-test of ``b`` against ``a`` (SciPy ``ttest_rel``).

    Identical scores give ``p = 1``. With fewer than 2 pairs, or differences that are all the same nonzero value
    (zero variance: the t statistic is undefined), the p-value is NaN and ``note`` says why.
    """
    import numpy as np

    sps = _scipy_stats()

    xa, xb = _pair(a, b)
    diff = xb - xa
    if np.allclose(diff, 0.0):
        return TestResult("paired-t", 0.0, 1.0)
    if diff.size < 2:
        return TestResult("paired-t", math.nan, math.nan, "p undefined: a paired t-test needs at least 2 examples")
    if np.allclose(diff, diff[0]):
        return TestResult("paired-t", math.nan, math.nan, "p undefined: every paired difference is the same "
                          f"({float(diff[0]):+.4g}), so their variance is 0 and the t statistic is undefined; use "
                          "more (or more varied) examples, or --test wilcoxon")
    res = sps.ttest_rel(xb, xa)
    return TestResult("paired-t", float(res.statistic), float(res.pvalue))


def wilcoxon(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Wilcoxon signed-rank test of the paired differences (SciPy ``wilcoxon``, zero differences dropped)."""
    import numpy as np

    sps = _scipy_stats()

    xa, xb = _pair(a, b)
    if np.allclose(xb, xa):
        return TestResult("wilcoxon", 0.0, 1.0)
    if xa.size < 2:
        return TestResult("wilcoxon", math.nan, math.nan, "p undefined: a signed-rank test needs at least 2 "
                          "examples")
    res = sps.wilcoxon(xb, xa, zero_method="wilcox")
    return TestResult("wilcoxon", float(res.statistic), float(res.pvalue))


@dataclass(frozen=True)
class Comparison:
    """B against A on the same examples.

    Attributes:
        n: number of paired examples.
        mean_a, mean_b: mean scores.
        delta: ``mean_b - mean_a``.
        ci_low, ci_high: paired bootstrap interval of ``delta``.
        confidence: the interval's level.
        test: the significance test used (``mcnemar-exact``, ``mcnemar-chi2``, ``paired-t``, ``wilcoxon``).
        statistic, p_value: its statistic and two-sided p-value (NaN when undefined; see ``note``).
        errors_a, errors_b: examples where A (B) raised instead of answering (they score 0).
        note: why the p-value is undefined, if it is.
    """

    n: int
    mean_a: float
    mean_b: float
    delta: float
    ci_low: float
    ci_high: float
    confidence: float
    test: str
    statistic: float
    p_value: float
    errors_a: int = 0
    errors_b: int = 0
    note: str = ""

    @property
    def errors(self) -> int:
        """Examples where A or B raised (counted per program)."""
        return self.errors_a + self.errors_b

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "errors": self.errors}


def is_binary(scores: Sequence[float]) -> bool:
    """Every score is 0 or 1 (``True``/``False`` count)."""
    return all(float(s) in (0.0, 1.0) for s in scores)


def compare(a: Sequence[float], b: Sequence[float], *, test: Test = "auto", confidence: float = 0.95,
            resamples: int = 10_000, seed: int = 0, errors_a: int = 0, errors_b: int = 0) -> Comparison:
    """Compare B with A on paired per-example scores.

    ``test="auto"`` uses McNemar when both score lists are 0/1, else the paired t-test. ``errors_a`` /
    ``errors_b``: how many of the examples raised for each program (recorded, and available to gates).
    """
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; choose one of {', '.join(TESTS)}")
    xa, xb = _pair(a, b)
    delta, low, high = paired_bootstrap(xa.tolist(), xb.tolist(), confidence=confidence, resamples=resamples,
                                        seed=seed)
    if test == "auto":
        test = "mcnemar" if is_binary(xa.tolist()) and is_binary(xb.tolist()) else "t"
    result = {"mcnemar": mcnemar, "t": paired_t, "wilcoxon": wilcoxon}[test](xa.tolist(), xb.tolist())
    return Comparison(int(xa.size), float(xa.mean()), float(xb.mean()), delta, low, high, confidence,
                      result.test, result.statistic, result.p_value, errors_a, errors_b, result.note)


# -- quality gates --------------------------------------------------------------------------------------------

GATE_FIELDS: dict[str, str] = {
    "delta": "delta", "p": "p_value", "p_value": "p_value", "ci_low": "ci_low", "ci_high": "ci_high",
    "a": "mean_a", "b": "mean_b", "mean_a": "mean_a", "mean_b": "mean_b", "n": "n",
    "errors": "errors", "errors_a": "errors_a", "errors_b": "errors_b",
}
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne,
}
_GATE = re.compile(r"^\s*([A-Za-z_]*)\s*(>=|<=|==|!=|>|<|=)?\s*(.*?)\s*$")
_NUMBER = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")


@dataclass(frozen=True)
class Gate:
    """One condition such as ``delta>0.02``: ``field op threshold``."""

    field: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.field}{self.op}{self.threshold:g}"


@dataclass(frozen=True)
class GateResult:
    """A gate, the value it saw and whether it held."""

    gate: Gate
    value: float
    passed: bool
    reason: str = ""

    def __str__(self) -> str:
        text = f"{'PASS' if self.passed else 'FAIL'} {self.gate} (value {self.value:.6g})"
        return f"{text}: {self.reason}" if self.reason else text


def parse_gates(text: str) -> list[Gate]:
    """Parse ``"delta>0.02,p<0.05"`` into gates; the error names the bad condition and the allowed fields."""
    gates: list[Gate] = []
    example = "write FIELD OP NUMBER, e.g. delta>0.02, p<0.05 or n>=100"
    for part in (p.strip() for p in text.split(",") if p.strip()):
        match = _GATE.match(part)
        assert match is not None  # the pattern matches any text
        field, op, number = match.groups()
        if not field:
            raise ValueError(f"gate {part!r} does not start with a field name; {example}")
        if field not in GATE_FIELDS:
            raise ValueError(f"unknown gate field {field!r} in {part!r}; known: {', '.join(GATE_FIELDS)}")
        if not op:
            raise ValueError(f"gate {part!r} has no comparison operator (one of {' '.join(_OPS)}); {example}")
        if op == "=":
            raise ValueError(f"gate {part!r}: use == for equality; {example}")
        if not number:
            raise ValueError(f"gate {part!r} has no number after {op!r}; {example}")
        if not _NUMBER.match(number):
            raise ValueError(f"gate {part!r}: {number!r} is not a number; {example}")
        gates.append(Gate(field, op, float(number)))
    if not gates:
        raise ValueError("empty gate; write conditions such as delta>0.02,p<0.05")
    return gates


def check_gates(comparison: Comparison, gates: Sequence[Gate] | str) -> list[GateResult]:
    """Evaluate each gate on ``comparison``."""
    if isinstance(gates, str):
        gates = parse_gates(gates)
    out: list[GateResult] = []
    for gate in gates:
        value = float(getattr(comparison, GATE_FIELDS[gate.field]))
        if math.isnan(value):
            reason = comparison.note if GATE_FIELDS[gate.field] == "p_value" and comparison.note else \
                f"{gate.field} is undefined (NaN)"
            out.append(GateResult(gate, value, False, reason))
            continue
        out.append(GateResult(gate, value, bool(_OPS[gate.op](value, gate.threshold))))
    return out
