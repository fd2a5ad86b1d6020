"""One LM call as the hook layer sees it: :class:`LMCall`, the call running in this context, and LM -> plugin
manager tokens.

This module is part of the hook layer (with :mod:`~dspyo3_core.hookspecs` and :mod:`~dspyo3_core.plugins`): it
imports neither DSPy nor the LM classes. The LM layer (:mod:`~dspyo3_core.lm`, :mod:`~dspyo3_core.native_lm`,
:mod:`~dspyo3_core.offline`) builds calls and runs them; core's innermost ``dspyo3_lm_call`` impl is recognised by
the :func:`innermost` marker on its function, not by importing the module that defines it.
"""

from __future__ import annotations

import contextvars
import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from dspyo3_core.plugins import get_plugin_manager
from dspyo3_core.pricing import PRICING
from dspyo3_core.secrets import masked

if TYPE_CHECKING:
    import dspy

    from dspyo3_core.plugins import PluginManager

__all__ = [
    "CURRENT_CALL",
    "LMCall",
    "current_call",
    "innermost",
    "is_innermost",
    "manager_token",
    "note_history",
    "note_result",
    "plugin_manager_for",
    "wrappers_active",
    "wrappers_async_aware",
]

F = TypeVar("F", bound=Callable[..., Any])

CURRENT_CALL: contextvars.ContextVar[LMCall | None] = contextvars.ContextVar("dspyo3_current_lm_call", default=None)
"""The :class:`LMCall` whose real call is running in this context. The LM layer sets it around the real call
(``token = CURRENT_CALL.set(call)`` ... ``CURRENT_CALL.reset(token)``); everyone else reads it through
:func:`current_call`."""

ASYNC_AWARE_MARK = "dspyo3_async_aware"
"""A ``dspyo3_lm_call`` wrapper whose function carries this attribute (set to True) handles deferred calls
(:attr:`LMCall.deferred`): given an awaitable by ``outputs = yield``, it returns an awaitable of the outputs."""

INNERMOST_MARK = "dspyo3_innermost"
"""The attribute :func:`innermost` sets on the function of core's innermost ``dspyo3_lm_call`` impl."""

# token -> weak reference to the manager: an LM does not keep a manager (and its plugins) alive.
_MANAGERS: dict[str, weakref.ref[PluginManager]] = {}


def innermost(function: F) -> F:
    """Mark ``function`` as the innermost ``dspyo3_lm_call`` impl (the real call, not a wrapper)."""
    setattr(function, INNERMOST_MARK, True)
    return function


def is_innermost(function: Any) -> bool:
    """Whether ``function`` carries the :func:`innermost` mark."""
    return getattr(function, INNERMOST_MARK, False) is True


def current_call() -> LMCall | None:
    """The :class:`LMCall` whose real call is running in this context (inside :meth:`LMCall.invoke`), else None.

    DSPy-level hooks that run inside the call (``dspy.cache`` lookups, ``update_history``) use it to report back
    to the wrappers: a cache tier notes its hit, the LM its usage and cost."""
    return CURRENT_CALL.get()


def wrappers_active(manager: PluginManager) -> bool:
    """Whether any ``dspyo3_lm_call`` impl besides core's innermost one would act on a call right now.

    An impl that is sometimes a pass-through (a wrapper installed but not configured) says so with a
    ``dspyo3_active`` attribute on its function, a callable returning False while it would only
    ``return (yield)``; LMs then skip the hook machinery (for async calls, the worker thread) when none is active.
    """
    for impl in manager.hook.dspyo3_lm_call.get_hookimpls():
        if is_innermost(impl.function):
            continue
        check = getattr(impl.function, "dspyo3_active", None)
        if check is None or check():
            return True
    return False


def wrappers_async_aware(manager: PluginManager) -> bool:
    """Whether every active ``dspyo3_lm_call`` impl besides core's innermost one handles deferred calls (its
    function carries ``dspyo3_async_aware = True``): async calls may then run the hook chain on the event loop,
    with :attr:`LMCall.deferred` set, instead of in a worker thread."""
    for impl in manager.hook.dspyo3_lm_call.get_hookimpls():
        function = impl.function
        if is_innermost(function) or getattr(function, ASYNC_AWARE_MARK, False) is True:
            continue
        check = getattr(function, "dspyo3_active", None)
        if check is None or check():
            return False
    return True


def manager_token(manager: PluginManager) -> str:
    """A token naming ``manager``, for an LM to store instead of the manager itself.

    LMs are deep-copied and pickled by DSPy (``dspy.LM.copy()``, ``save``), while a plugin manager is shared and
    holds live plugins; so an LM keeps this string (as ``self._dspyo3_pm_token``) and :func:`plugin_manager_for`
    turns it back into the manager. The registry holds a weak reference: an LM does not keep a manager alive, and
    a token whose manager is gone falls back to the process-wide manager. Custom LMs that route through the
    ``dspyo3_lm_call`` hook with their own ``plugin_manager=`` use it the same way.
    """
    token = f"pm-{id(manager):x}"
    ref = _MANAGERS.get(token)
    if ref is None or ref() is not manager:
        _MANAGERS[token] = weakref.ref(manager, functools.partial(_forget, token))
    return token


def _forget(token: str, dead: weakref.ref[PluginManager]) -> None:
    if _MANAGERS.get(token) is dead:
        del _MANAGERS[token]


def plugin_manager_for(lm: Any) -> PluginManager:
    """The plugin manager an LM built with ``plugin_manager=`` routes through (else the process-wide one)."""
    ref = _MANAGERS.get(getattr(lm, "_dspyo3_pm_token", None) or "")
    manager = ref() if ref is not None else None
    return manager if manager is not None else get_plugin_manager()


@dataclass
class LMCall:
    """One LM call as the ``dspyo3_lm_call`` hook sees it.

    Attributes:
        lm: the :class:`~dspyo3_core.lm.HookedLM` (or :class:`~dspyo3_core.native_lm.NativeLM`) being called
            (``lm.model``, ``lm.kwargs``).
        prompt: the prompt string, if the caller passed one.
        messages: the chat messages, if the caller passed them (what DSPy adapters do).
        kwargs: per-call keyword arguments (``temperature``, ``n``, ``rollout_id``, ...).
        is_async: the call came in through ``acall``.
        metadata: free space for wrappers to share data about this call (timings, cache keys, ...).
        usage: token usage the LM reported for this call (filled in when the call finishes; ``{}`` on a cache hit).
        cost: USD cost of this call, worked out once, by the LM layer (None when it knows no price, and on a cache
            hit); :attr:`cost_source` says where it comes from. Cost tracking (dspyo3-production's
            ``CostTracker``) takes it as is when it would price the call from the same place.
        cost_source: where :attr:`cost` comes from: ``"pricing"`` (the process-wide
            :data:`~dspyo3_core.pricing.PRICING` table), ``"lm"`` (the LM's own price, ``NativeLM(pricing=...)``),
            ``"reported"`` (what DSPy/LiteLLM reported in the LM's history entry, for a model PRICING has no
            price for); None when there is no cost.
        latency_s: seconds the real call took (the innermost ``dspyo3_lm_call`` impl, cache lookups included; for
            a deferred call, until its awaitable finished), set by the LM layer; None when the real call never ran
            (a wrapper refused it or answered itself). Wrappers that time more (their own work, a breaker or budget
            check) measure that themselves: dspyo3-production's ``lm_call`` events and metrics report this figure,
            and their own elapsed time only for calls refused before the real call.
        error: the exception the real call raised, else None (set by the LM layer; an exception raised by a
            wrapper is not put here).
        cache_hit: the answer came from a cache, not the provider.
        cache_tier: which cache tier answered (``"memory"``, ``"redis"``, ``"disk"``), when the cache says so.
        deferred: an async call running its hook chain on the event loop: the innermost impl returns an awaitable
            of the outputs (not the outputs), and each wrapper, all marked ``dspyo3_async_aware``, returns an
            awaitable that finishes its work once that one is done. The LM awaits what the hook returns.
        finish_reasons: why each choice ended (``"stop"``, ``"length"``, ...), when the response says so.
        response_model: the model the provider says answered (may differ from :attr:`model`).
        response_id: the provider's id of the response.
        attempts: the HTTP attempts the transport made, as ``(span_id_hex, start_unix_ns, end_unix_ns, status or
            None, error kind or None)`` tuples (NativeLM with tracing on); None when not known.
    """

    lm: dspy.BaseLM
    prompt: Any = None
    messages: Any = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    is_async: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    cost: float | None = None
    cache_hit: bool = False
    cache_tier: str | None = None
    deferred: bool = False
    cost_source: str | None = None
    latency_s: float | None = None
    error: BaseException | None = None
    finish_reasons: tuple[str, ...] | None = None
    response_model: str | None = None
    response_id: str | None = None
    attempts: list[tuple[Any, ...]] | None = None

    @property
    def model(self) -> str:
        """The LiteLLM model string of the LM being called."""
        return str(self.lm.model)

    def __repr__(self) -> str:
        # Wrappers log calls; a per-call api_key (or any secret-looking argument) must not go with them.
        shown = masked(self.kwargs)
        return (
            f"LMCall(model={self.model!r}, prompt={self.prompt!r}, messages={self.messages!r}, kwargs={shown!r}, "
            f"is_async={self.is_async!r})"
        )

    def invoke(self) -> Any:
        """Run the real call (cache, retries and transport included): the innermost ``dspyo3_lm_call`` impl of
        the LM's plugin manager (the one marked with :func:`innermost`), skipping every wrapper."""
        for impl in reversed(plugin_manager_for(self.lm).hook.dspyo3_lm_call.get_hookimpls()):
            if is_innermost(impl.function):
                return impl.function(self)
        raise RuntimeError("no innermost dspyo3_lm_call impl is registered (is dspyo3-core's plugin disabled?)")

    # -- what happened inside the call: the one way results travel back up to the wrappers -------------------
    def note_cache_hit(self, tier: str | None = None) -> None:
        """A cache answered this call (``tier``: ``"memory"``, ``"redis"``, ``"disk"``, when the cache knows).

        Called by a cache tier under DSPy's ``dspy.cache``, which finds the call with :func:`current_call`
        (DSPy's cache API passes no call object down)."""
        self.cache_hit = True
        if tier is not None:
            self.cache_tier = tier

    def note_usage(self, usage: dict[str, Any] | None, cost: float | None = None,
                   cost_source: str | None = None) -> None:
        """The LM's billed ``usage`` for this call and its ``cost``, worked out once by the LM layer
        (``cost_source``: see :attr:`cost_source`; ignored when ``cost`` is None)."""
        self.usage = usage if usage is not None else {}
        self.cost = cost
        self.cost_source = cost_source if cost is not None else None

    def record(self, entry: dict[str, Any]) -> None:
        """Take usage and cost from the LM's history entry for this call (:meth:`note_usage`).

        The cost is priced once, here, from :data:`~dspyo3_core.pricing.PRICING` (so your ``PRICING.set``
        overrides hold for every LM); what DSPy/LiteLLM reported in the entry is used only for a model with no
        price there. An entry with no usage (DSPy's own cache answered) has no cost."""
        usage = entry.get("usage")
        billed = dict(usage) if usage else {}
        cost: float | None = None
        source: str | None = None
        if billed:
            prompt = billed.get("prompt_tokens") or billed.get("input_tokens") or 0
            completion = billed.get("completion_tokens") or billed.get("output_tokens") or 0
            price = PRICING.looked_up.get(self.model, _UNKNOWN)
            if price is _UNKNOWN:
                price = PRICING.price(self.model)
            if price is not None:
                cost, source = (int(prompt) * price[0] + int(completion) * price[1]) / 1e6, "pricing"
        if cost is None and billed:  # no billed tokens (a DSPy cache hit keeps the first call's cost): no cost
            reported = entry.get("cost")
            if isinstance(reported, (int, float)) and not isinstance(reported, bool):
                cost, source = float(reported), "reported"
        self.usage, self.cost, self.cost_source = billed, cost, source
        self._note_response(entry.get("response"))

    def _note_response(self, response: Any) -> None:
        """Finish reasons, model and id from a provider response: a LiteLLM ``ModelResponse`` (``choices[i]
        .finish_reason``), a dict of the same shape, or an object with a single ``finish_reason``. Anything else
        (or a response that raises while being read) leaves the fields as they are."""
        if response is None:
            return
        try:
            get = response.get if isinstance(response, dict) else functools.partial(getattr, response)
            choices = get("choices", None)
            reasons: list[str] = []
            if isinstance(choices, (list, tuple)):
                for choice in choices:
                    reason = (choice.get("finish_reason") if isinstance(choice, dict)
                              else getattr(choice, "finish_reason", None))
                    if isinstance(reason, str):
                        reasons.append(reason)
            else:
                reason = get("finish_reason", None)
                if isinstance(reason, str):
                    reasons.append(reason)
            if reasons:
                self.finish_reasons = tuple(reasons)
            model = get("model", None)
            if isinstance(model, str) and model:
                self.response_model = model
            rid = get("id", None)
            if isinstance(rid, str) and rid:
                self.response_id = rid
        except Exception:  # a foreign response shape: the fields are optional
            return


_UNKNOWN: Any = object()


def _running_for(lm: Any) -> LMCall | None:
    """The :class:`LMCall` running in this context, if it is a call of ``lm``."""
    call = CURRENT_CALL.get()
    return call if call is not None and call.lm is lm else None


def note_history(lm: Any, entry: dict[str, Any]) -> None:
    """Hand ``entry`` (an LM history entry being recorded) to the :class:`LMCall` running for ``lm``, if any."""
    call = _running_for(lm)
    if call is not None:
        call.record(entry)


def note_result(lm: Any, usage: dict[str, Any], cost: float | None, cache_hit: bool,
                cost_source: str | None = None, *, finish_reasons: tuple[str, ...] | list[str] | None = None,
                response_model: str | None = None, response_id: str | None = None,
                attempts: list[tuple[Any, ...]] | None = None) -> None:
    """Report one finished call's usage, cost (and where it comes from: :attr:`LMCall.cost_source`) and cache mark
    to the :class:`LMCall` running for ``lm``, if any (:meth:`LMCall.note_usage`, :meth:`LMCall.note_cache_hit`).
    For LMs whose own code finishes the call (NativeLM, OfflineLM); ``finish_reasons``, ``response_model``,
    ``response_id`` and ``attempts`` fill the fields of the same names when given."""
    call = _running_for(lm)
    if call is not None:
        call.note_usage(usage, cost, cost_source)
        if cache_hit:
            call.note_cache_hit()
        if finish_reasons is not None:
            call.finish_reasons = tuple(finish_reasons)
        if response_model is not None:
            call.response_model = response_model
        if response_id is not None:
            call.response_id = response_id
        if attempts is not None:
            call.attempts = attempts
