"""Paired statistics against values worked out by hand (or from textbook formulas), and quality gates."""

from __future__ import annotations

import math
import re

import pytest

from dspyo3_optimize.stats import (
    bootstrap_ci,
    check_gates,
    compare,
    mcnemar,
    paired_bootstrap,
    paired_t,
    parse_gates,
    wilcoxon,
)


def _pairs(b01: int, b10: int, both: int = 0, neither: int = 0) -> tuple[list[int], list[int]]:
    """Paired 0/1 outcomes with b01 (A wrong, B right) and b10 (A right, B wrong) discordant pairs."""
    a = [0] * b01 + [1] * b10 + [1] * both + [0] * neither
    b = [1] * b01 + [0] * b10 + [1] * both + [0] * neither
    return a, b


def test_mcnemar_exact_small_sample() -> None:
    # 7 pairs improved, 1 got worse: two-sided exact binomial p = 2 * P(X <= 1 | n=8, 1/2) = 2 * 9/256
    a, b = _pairs(7, 1, both=10, neither=5)
    result = mcnemar(a, b)
    assert result.test == "mcnemar-exact"
    assert result.p_value == pytest.approx(2 * 9 / 256)
    assert result.statistic == 1


def test_mcnemar_chi_square_with_continuity_correction() -> None:
    # (|30 - 10| - 1)^2 / 40 = 9.025; chi-square sf on 1 df = 0.0026631...
    a, b = _pairs(30, 10, both=50)
    result = mcnemar(a, b)
    assert result.test == "mcnemar-chi2"
    assert result.statistic == pytest.approx(9.025)
    assert result.p_value == pytest.approx(0.0026631, abs=1e-6)
    # the normal tail of sqrt(9.025) gives the same p (chi2 with 1 df is a squared normal)
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(9.025) / math.sqrt(2)), rel=1e-9)


def test_mcnemar_no_discordant_pairs_and_bad_input() -> None:
    assert mcnemar([1, 0, 1], [1, 0, 1]).p_value == 1.0
    with pytest.raises(ValueError, match="0/1 scores"):
        mcnemar([0.5, 1], [1, 1])
    with pytest.raises(ValueError, match="same examples"):
        mcnemar([1, 0], [1])


def test_paired_t_matches_the_formula() -> None:
    # differences 2, 4, 6, 8, 10: mean 6, sd sqrt(10), t = 6 / (sqrt(10)/sqrt(5)) = 4.2426, df 4, p = 0.013236
    a = [1.0] * 5
    b = [3.0, 5.0, 7.0, 9.0, 11.0]
    result = paired_t(a, b)
    assert result.statistic == pytest.approx(6 / (math.sqrt(10) / math.sqrt(5)))
    assert result.p_value == pytest.approx(0.0132356, abs=1e-6)


def test_wilcoxon_exact_all_positive() -> None:
    # six positive differences, no ties: the exact two-sided p is 2 / 2^6
    result = wilcoxon([0.0] * 6, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert result.statistic == 0
    assert result.p_value == pytest.approx(2 / 64)


def test_paired_bootstrap() -> None:
    delta, low, high = paired_bootstrap([0.0] * 20, [0.5] * 20)
    assert (delta, low, high) == (0.5, 0.5, 0.5)  # a constant difference has a degenerate interval
    a, b = _pairs(12, 3, both=20, neither=15)
    delta, low, high = paired_bootstrap(a, b, seed=1)
    assert delta == pytest.approx(9 / 50)
    assert low < delta < high
    # about +-1.96 standard errors of the paired differences
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    mean = sum(diffs) / len(diffs)
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / len(diffs)) / math.sqrt(len(diffs))
    assert low == pytest.approx(mean - 1.96 * se, abs=0.03)
    assert high == pytest.approx(mean + 1.96 * se, abs=0.03)
    assert paired_bootstrap(a, b, seed=1) == (delta, low, high)  # deterministic for a seed
    assert bootstrap_ci([1.0, 1.0]) == (1.0, 1.0)


def test_compare_picks_the_test() -> None:
    a, b = _pairs(9, 1, both=10)
    binary = compare(a, b)
    assert binary.test == "mcnemar-exact" and binary.n == 20
    assert binary.delta == pytest.approx(0.4) and binary.mean_b == pytest.approx(1.0 - 0.05)
    assert binary.p_value == pytest.approx(2 * 11 / 1024)
    graded = compare([0.1, 0.2, 0.3, 0.4], [0.3, 0.5, 0.4, 0.8])
    assert graded.test == "paired-t"
    assert compare([0.1, 0.2, 0.3, 0.4], [0.3, 0.5, 0.4, 0.8], test="wilcoxon").test == "wilcoxon"
    with pytest.raises(ValueError, match="unknown test"):
        compare([1], [1], test="z")  # type: ignore[arg-type]


def test_gates() -> None:
    a, b = _pairs(9, 1, both=10)
    comparison = compare(a, b)
    results = check_gates(comparison, "delta>0.02,p<0.05")
    assert [r.passed for r in results] == [True, True]
    assert str(results[0]).startswith("PASS delta>0.02")
    failed = check_gates(compare(b, a), parse_gates("delta > 0.02, p<0.05"))
    assert [r.passed for r in failed] == [False, True]
    assert [r.passed for r in check_gates(comparison, "ci_low>0,n>=20,b>=0.9")] == [True, True, True]
    with pytest.raises(ValueError, match="unknown gate field 'gain'"):
        parse_gates("gain>0.1")
    with pytest.raises(ValueError, match="gate 'delta>>1': '>1' is not a number"):
        parse_gates("delta>>1")


def test_constant_differences_and_single_pairs_have_no_p_value() -> None:
    """compare([0.2], [0.5]) must not pass "delta>0.02,p<0.05": one pair (or differences with zero variance)
    says nothing about significance."""
    one = compare([0.2], [0.5])
    assert one.test == "paired-t" and math.isnan(one.p_value) and "at least 2 examples" in one.note
    results = check_gates(one, "delta>0.02,p<0.05")
    assert [r.passed for r in results] == [True, False]
    assert str(results[1]) == "FAIL p<0.05 (value nan): p undefined: a paired t-test needs at least 2 examples"
    constant = compare([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    assert math.isnan(constant.p_value) and "variance is 0" in constant.note
    assert not check_gates(constant, "p<0.05")[0].passed
    assert not check_gates(constant, "p>=0.05")[0].passed  # NaN fails every p gate, whatever the direction
    same = compare([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert same.p_value == 1.0 and same.note == ""
    assert paired_t([0.5, 0.5], [0.5, 0.5]).p_value == 1.0


def test_wilcoxon_all_zero_differences_and_single_pair() -> None:
    zero = wilcoxon([0.3, 0.6, 0.9], [0.3, 0.6, 0.9])
    assert (zero.statistic, zero.p_value) == (0.0, 1.0)
    single = compare([0.2], [0.5], test="wilcoxon")
    assert math.isnan(single.p_value) and "at least 2 examples" in single.note
    assert not check_gates(single, "p<0.05")[0].passed


def test_n_and_error_gates() -> None:
    a, b = _pairs(9, 1, both=10)
    comparison = compare(a, b, errors_a=2, errors_b=1)
    assert (comparison.errors_a, comparison.errors_b, comparison.errors) == (2, 1, 3)
    assert comparison.to_dict()["errors"] == 3
    assert [r.passed for r in check_gates(comparison, "n>=20,n>=21,errors<=3,errors_b==0")] == \
        [True, False, True, False]


@pytest.mark.parametrize(("gate", "message"), [
    ("delta>", "gate 'delta>' has no number after '>'"),
    ("p<0.05,delta>=", "gate 'delta>=' has no number after '>='"),
    ("delta", "gate 'delta' has no comparison operator"),
    ("delta 0.1", "gate 'delta 0.1' has no comparison operator"),
    ("gain>0.1", "unknown gate field 'gain' in 'gain>0.1'; known: delta, p"),
    ("delta>abc", "gate 'delta>abc': 'abc' is not a number"),
    ("p<0.05.1", "gate 'p<0.05.1': '0.05.1' is not a number"),
    ("delta>nan", "gate 'delta>nan': 'nan' is not a number"),
    ("delta=0.1", "use == for equality"),
    (">0.1", "does not start with a field name"),
    (" , ", "empty gate"),
])
def test_malformed_gates_have_clear_errors(gate: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_gates(gate)


def _unchunked_bootstrap(scores: list[float], resamples: int, seed: int,
                         confidence: float = 0.95) -> tuple[float, float]:
    """The original implementation: every resample index drawn in one (resamples, n) matrix."""
    import numpy as np

    values = np.asarray(scores, dtype=float)
    idx = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))
    means = values[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


@pytest.mark.parametrize("n", [1, 7, 150, 2_500])
def test_chunked_bootstrap_draws_exactly_what_one_big_matrix_drew(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    from dspyo3_optimize import stats

    rnd = random.Random(n)
    scores = [rnd.random() for _ in range(n)]
    monkeypatch.setattr(stats, "BOOTSTRAP_CHUNK_ELEMENTS", 3 * n + 1)  # several uneven chunks even for small n
    for seed in (0, 11):
        assert stats.bootstrap_ci(scores, resamples=2_003, seed=seed) == _unchunked_bootstrap(scores, 2_003, seed)


def test_bootstrap_memory_stays_bounded_for_large_samples() -> None:
    import tracemalloc

    scores = [float(i % 2) for i in range(20_000)]
    tracemalloc.start()
    try:
        low, high = bootstrap_ci(scores, resamples=10_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert low < 0.5 < high
    assert peak < 100 * 2**20, f"peak {peak / 2**20:.0f} MiB"  # one (10_000, 20_000) index matrix alone is 1.6 GB
