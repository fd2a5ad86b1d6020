"""The circuit-breaker state machine that every dspyo3 breaker runs: per-tool breakers in dspyo3-agents and per-model
breakers in dspyo3-production (whose Redis-shared state keeps the same rules in a script).

A circuit is *closed* (calls pass) until ``failure_threshold`` counted failures in a row; it then *opens* (calls are
refused) for ``reset_timeout`` seconds, then lets ``max_trials`` trial calls through at a time (*half-open*): a
success closes it, a failure opens it again. A trial that never reports back (a cancelled or crashed caller) frees
its slot after ``reset_timeout``, so a circuit cannot stay stuck half-open.

:class:`Circuit` holds one circuit's state and takes the time as an argument: it owns neither a clock nor a lock, so
each owner keeps its own (one lock per tool, one per set of models) and tests move a clock by hand. Which errors
count, how a refusal is reported and where state is kept stay with the owner.
"""

from __future__ import annotations

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "Circuit", "check_limits"]

CLOSED = "closed"
"""Calls pass; failures are counted."""
OPEN = "open"
"""Calls are refused until the reset timeout has passed."""
HALF_OPEN = "half_open"
"""The reset timeout has passed: trial calls decide whether the circuit closes or opens again."""


def check_limits(failure_threshold: int, max_trials: int = 1) -> None:
    """Raise ``ValueError`` unless ``failure_threshold`` and ``max_trials`` are at least 1."""
    if failure_threshold < 1:
        raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
    if max_trials < 1:
        raise ValueError(f"half_open_max_calls must be >= 1, got {max_trials}")


class Circuit:
    """One circuit's state. Not thread-safe: the owner holds its lock around every method that changes it.

    Attributes:
        state: :data:`CLOSED`, :data:`OPEN` or :data:`HALF_OPEN` as of the last call to a method (an open circuit
            whose reset timeout has passed still says :data:`OPEN` until :meth:`admit`; :meth:`current` tells).
        failures: counted failures in a row (at least the threshold while the circuit is not closed).
        opened_at: when the circuit last opened (the owner's clock).
        trials: trial calls let through and not yet reported back while half-open.
        trial_started: when the current round of trial calls began.
    """

    __slots__ = ("failures", "opened_at", "state", "trial_started", "trials")

    def __init__(self) -> None:
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.trials = 0
        self.trial_started = 0.0

    def current(self, now: float, reset_timeout: float) -> str:
        """The state at time ``now`` (an open circuit whose reset timeout has passed is :data:`HALF_OPEN`)."""
        if self.state == OPEN and now - self.opened_at >= reset_timeout:
            return HALF_OPEN
        return self.state

    def admit(self, now: float, reset_timeout: float, max_trials: int = 1) -> float | None:
        """Let a call through (``None``; while half-open it takes a trial slot), or refuse it: the seconds until
        a call may be let through. An open circuit whose reset timeout has passed turns half-open here."""
        if self.state == CLOSED:
            return None
        if self.state == OPEN:
            wait = self.opened_at + reset_timeout - now
            if wait > 0:
                return wait
            self.state, self.trials = HALF_OPEN, 0
        if self.trials >= max_trials:
            if now - self.trial_started < reset_timeout:
                return self.trial_started + reset_timeout - now
            self.trials = 0  # trials that never reported back expire
        if self.trials == 0:
            self.trial_started = now
        self.trials += 1
        return None

    def succeed(self) -> bool:
        """Record a successful call: the circuit closes and the count restarts. Whether it was not closed."""
        was = self.state
        self.state, self.failures, self.trials = CLOSED, 0, 0
        return was != CLOSED

    def fail(self, now: float, failure_threshold: int) -> bool:
        """Record a counted failure: the circuit opens at the threshold, or again after a failed trial (its open
        time restarts either way). Whether it is open now."""
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= failure_threshold:
            self.state, self.opened_at, self.trials = OPEN, now, 0
            return True
        return False

    def release(self) -> None:
        """A call let through ended without saying anything about the service's health (the caller's own error,
        its budget, a cancellation): give back its trial slot, if it took one."""
        if self.state == HALF_OPEN and self.trials:
            self.trials -= 1
