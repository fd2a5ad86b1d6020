"""The cost budget of an optimizer run (:class:`RunBudget`)."""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterator
from typing import Any


class RunBudget:
    """The per-run cost budget: through dspyo3-production's CostTracker when it is installed (calls are refused
    before they overspend), else the cost DSPy records in the LM's history, checked between trials.

    With dspyo3-production the run adds a :class:`~dspyo3_production.Budget` of its own (to the active stack's
    tracker, or to a stack it enables) and counts the calls *that* budget refuses for *this* run: refusals by other
    budgets of a shared tracker, or of other runs, never end this run."""

    def __init__(self, limit: float | None, run_id: str, lm: Any, prior: float = 0.0) -> None:
        self.limit = limit
        self.prior = prior
        remaining = None if limit is None else limit - prior  # what earlier sessions of this run left
        self.run_id = run_id
        self.lm = lm
        self._stack: Any = None
        self._enabled_here = False
        self._history_start = len(getattr(lm, "history", []) or [])
        self.via = "none"
        self._exceeded_types: tuple[type[BaseException], ...] = ()
        self._budget: Any = None
        self._added = False
        self._refusals = 0
        self._refusals_lock = threading.Lock()
        prod: Any
        try:
            prod = importlib.import_module("dspyo3_production")
        except ImportError:
            prod = None
        if prod is not None:
            self._exceeded_types = (prod.BudgetExceededError,)
            if remaining is not None:
                self._budget = prod.Budget(max(remaining, 0.0), per="run", name=f"optimize-run:{run_id}",
                                           on_refuse=self._on_refuse)
            stack = prod.active()
            if stack is None and self._budget is not None:
                stack = prod.enable(prod.Production(metrics=False, log_events=False, module_callbacks=False,
                                                    budgets=[self._budget]))
                self._enabled_here = True
            elif stack is not None and self._budget is not None and stack.costs is not None:
                stack.costs.budgets.append(self._budget)
                self._added = True
            self._stack = stack
            if stack is not None and stack.costs is not None:
                self.via = "dspyo3-production"
        if self.via == "none" and limit is not None:
            self.via = "lm-history"

    def _on_refuse(self, error: Any) -> None:
        """This run's budget refused a call: count it if the call was this run's (a per-run budget also limits
        the calls of other runs sharing the tracker; those are theirs to count)."""
        if getattr(error, "scope", None) == f"run={self.run_id}":
            with self._refusals_lock:
                self._refusals += 1

    @property
    def refusals(self) -> int:
        """Calls of this run refused by this run's budget (optimizers and evaluation swallow per-example errors,
        so this count is how the run learns that its budget stopped calls)."""
        return self._refusals

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Charge LM calls in this block to the run."""
        if self._stack is None:
            yield
            return
        import dspyo3_production as prod

        with prod.attribute(run=self.run_id):
            yield

    def spent(self) -> float | None:
        """USD spent by this run in this process (None when nothing tracks cost)."""
        if self._stack is not None and self._stack.costs is not None:
            return float(self._stack.costs.totals("run").get(self.run_id, 0.0))
        history = getattr(self.lm, "history", None)
        if history is None:
            return None
        return float(sum((entry.get("cost") or 0.0) for entry in history[self._history_start:]))

    def exceeded(self) -> bool:
        """The limit is reached (counting what earlier sessions of this run spent)."""
        if self.refusals:
            return True
        if self.limit is not None and self.prior >= self.limit:
            return True
        spent = self.spent()
        return self.limit is not None and spent is not None and self.prior + spent >= self.limit

    def is_budget_error(self, exc: BaseException) -> bool:
        """``exc`` is dspyo3-production's refusal of a call over budget."""
        return bool(self._exceeded_types) and isinstance(exc, self._exceeded_types)

    def close(self) -> None:
        """Take off the stack this run enabled (or the budget it added to an existing one)."""
        if self._added and self._stack is not None and self._stack.costs is not None:
            budgets = self._stack.costs.budgets  # by identity: an equal budget of another run stays
            budgets[:] = [b for b in budgets if b is not self._budget]
        if self._enabled_here:
            import dspyo3_production as prod

            prod.disable(close=True)
