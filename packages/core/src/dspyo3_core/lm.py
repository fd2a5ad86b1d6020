"""The LM-call hook point: a ``dspy.LM`` whose every call goes through ``dspyo3_lm_call``.

:class:`HookedLM` is a plain ``dspy.LM`` (same constructor, same LiteLLM/lm15 engines, same DSPy cache and
retries) except that each call is wrapped in an :class:`LMCall` and handed to the plugin manager's
``dspyo3_lm_call`` hook. Production features (cache tiers, metrics, cost, rate limits, circuit breakers)
install themselves as pluggy ``wrapper=True`` impls of that hook, so they compose by installing packages.

Async calls (``acall``, used by ``Module.acall``) run the same hook chain in a worker thread, so wrappers are
written once, as plain generators; streaming (``dspy.streamify``) keeps working because the worker is an anyio
thread that can send chunks back to the event loop. When no plugin acts on the hook (see :func:`wrappers_active`)
async calls take DSPy's own async path instead: no thread, and cancellation reaches the request.
"""

from __future__ import annotations

import contextvars
import functools
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dspy
import dspy.dsp.utils.settings as _dspy_settings

from dspyo3_core.secrets import masked, register_secret, secret_values

if TYPE_CHECKING:
    from dspyo3_core.plugins import PluginManager


# token -> weak reference to the manager: an LM does not keep a manager (and its plugins) alive.
_MANAGERS: dict[str, weakref.ref[PluginManager]] = {}


_UNSET: Any = object()
_CURRENT: contextvars.ContextVar[LMCall | None] = contextvars.ContextVar("dspyo3_current_lm_call", default=None)


def current_call() -> LMCall | None:
    """The :class:`LMCall` whose real call is running in this context (inside :meth:`LMCall.invoke`), else None.

    DSPy-level hooks that run inside the call (``dspy.cache`` lookups, ``update_history``) use it to report back
    to the wrappers: a cache tier notes its hit, the LM its usage and cost."""
    return _CURRENT.get()


def wrappers_active(manager: PluginManager) -> bool:
    """Whether any ``dspyo3_lm_call`` impl besides core's innermost one would act on a call right now.

    An impl that is sometimes a pass-through (a wrapper installed but not configured) says so with a
    ``dspyo3_active`` attribute on its function, a callable returning False while it would only
    ``return (yield)``; LMs then skip the hook machinery (for async calls, the worker thread) when none is active.
    """
    from dspyo3_core import plugin as core_plugin

    for impl in manager.hook.dspyo3_lm_call.get_hookimpls():
        if impl.function is core_plugin.dspyo3_lm_call:
            continue
        check = getattr(impl.function, "dspyo3_active", None)
        if check is None or check():
            return True
    return False


def lm_callbacks_wanted(lm: Any, callbacks: Any = _UNSET) -> bool:
    """Whether any active DSPy callback (global or on ``lm``) wants LM events.

    A callback that only watches modules and tools says so with a class attribute ``dspyo3_lm_events = False``
    (dspyo3-production's does); when every active callback says so, LM calls skip DSPy's per-call callback
    dispatch, which costs more than the rest of a cached call. ``callbacks``: DSPy's active global callbacks,
    when the caller has already read them.
    """
    if callbacks is _UNSET:
        callbacks = dspy.settings.get("callbacks")
    for callback in callbacks or ():
        if getattr(callback, "dspyo3_lm_events", True):
            return True
    return any(getattr(callback, "dspyo3_lm_events", True) for callback in getattr(lm, "callbacks", None) or ())


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


@dataclass
class LMCall:
    """One LM call as the ``dspyo3_lm_call`` hook sees it.

    Attributes:
        lm: the :class:`HookedLM` (or :class:`~dspyo3_core.native_lm.NativeLM`) being called (``lm.model``,
            ``lm.kwargs``).
        prompt: the prompt string, if the caller passed one.
        messages: the chat messages, if the caller passed them (what DSPy adapters do).
        kwargs: per-call keyword arguments (``temperature``, ``n``, ``rollout_id``, ...).
        is_async: the call came in through ``acall``.
        metadata: free space for wrappers to share data about this call (timings, cache keys, ...).
        usage: token usage the LM reported for this call (filled in when the call finishes; ``{}`` on a cache hit).
        cost: USD cost the LM computed for this call, if it knows its price.
        cache_hit: the answer came from a cache, not the provider.
        cache_tier: which cache tier answered (``"memory"``, ``"redis"``, ``"disk"``), when the cache says so.
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
        """Run the real call (cache, retries and transport included): :func:`invoke_call`."""
        return invoke_call(self)

    def record(self, entry: dict[str, Any]) -> None:
        """Take usage and cost from the LM's history entry for this call."""
        usage = entry.get("usage")
        self.usage = dict(usage) if usage else {}
        cost = entry.get("cost")
        self.cost = float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None


def invoke_call(call: LMCall) -> Any:
    """Run ``call``'s real call (cache, retries and transport included): core's innermost ``dspyo3_lm_call`` impl
    (registered as that impl directly, so the hook chain has one frame less per call)."""
    token = _CURRENT.set(call)
    try:
        native = getattr(call.lm, "_dspyo3_invoke", None)
        if native is not None:
            return native(call.prompt, call.messages, call.kwargs)
        try:  # dspy.settings read straight from DSPy's settings module: this runs on every call
            overrides, main = _dspy_settings.thread_local_overrides.get(), _dspy_settings.main_thread_config
            callbacks = overrides["callbacks"] if "callbacks" in overrides else main.get("callbacks")
            no_history = (overrides["disable_history"] if "disable_history" in overrides
                          else main.get("disable_history"))
        except AttributeError:  # that module changed shape: the public (slower) way
            callbacks = dspy.settings.get("callbacks")
            no_history = dspy.settings.get("disable_history")
        wanted = False  # lm_callbacks_wanted(), inlined
        for callback in callbacks or ():
            if getattr(callback, "dspyo3_lm_events", True):
                wanted = True
                break
        if not wanted and getattr(call.lm, "callbacks", None):
            wanted = lm_callbacks_wanted(call.lm, ())
        run = dspy.LM.__call__ if wanted else _LM_CALL_UNWRAPPED
        # with history off there is no history entry to learn usage from: listen to the usage tracker instead
        if not no_history:
            return run(call.lm, call.prompt, messages=call.messages, **call.kwargs)
        with dspy.context(usage_tracker=_UsageTee(dspy.settings.get("usage_tracker"), call)):
            return run(call.lm, call.prompt, messages=call.messages, **call.kwargs)
    finally:
        _CURRENT.reset(token)


class _UsageTee:
    """A usage tracker that hands billed usage to an :class:`LMCall` and passes everything on to the tracker it
    stands in for (``dspy.track_usage``'s, if any)."""

    def __init__(self, inner: Any, call: LMCall) -> None:
        self._inner = inner
        self._call = call

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        self._call.usage = dict(usage_entry or {})
        if self._inner is not None:
            self._inner.add_usage(lm, usage_entry)

    def __getattr__(self, name: str) -> Any:
        if self._inner is None:
            raise AttributeError(name)
        return getattr(self._inner, name)


def _running_for(lm: Any) -> LMCall | None:
    """The :class:`LMCall` running in this context, if it is a call of ``lm``."""
    call = _CURRENT.get()
    return call if call is not None and call.lm is lm else None


def note_history(lm: Any, entry: dict[str, Any]) -> None:
    """Hand ``entry`` (an LM history entry being recorded) to the :class:`LMCall` running for ``lm``, if any."""
    call = _running_for(lm)
    if call is not None:
        call.record(entry)


def note_result(lm: Any, usage: dict[str, Any], cost: float | None, cache_hit: bool) -> None:
    """Report one finished call's usage, cost and cache mark to the :class:`LMCall` running for ``lm``, if any."""
    call = _running_for(lm)
    if call is not None:
        call.usage, call.cost = usage, cost
        call.cache_hit = call.cache_hit or cache_hit


_LM_CALL_UNWRAPPED = getattr(dspy.LM.__call__, "__wrapped__", dspy.LM.__call__)  # without DSPy's callback dispatch


def plugin_manager_for(lm: Any) -> PluginManager:
    """The plugin manager an LM built with ``plugin_manager=`` routes through (else the process-wide one)."""
    from dspyo3_core.plugins import get_plugin_manager

    ref = _MANAGERS.get(getattr(lm, "_dspyo3_pm_token", None) or "")
    manager = ref() if ref is not None else None
    return manager if manager is not None else get_plugin_manager()


def _default_manager() -> PluginManager:
    from dspyo3_core.plugins import get_plugin_manager

    return get_plugin_manager()


class HookedLM(dspy.LM):
    """``dspy.LM`` that routes every call through the ``dspyo3_lm_call`` hook.

    Construct it like ``dspy.LM`` (``HookedLM("openai/gpt-4o-mini", api_key=...)``), or from a profile with
    :func:`dspyo3_core.config.build_lm`. ``plugin_manager`` defaults to the process-wide manager.
    """

    def __init__(self, model: str, *args: Any, plugin_manager: PluginManager | None = None, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        register_secret(*secret_values(self.kwargs))
        # A token, not the manager itself: dspy.LM.copy() deep-copies and pickles LMs, the manager is shared.
        self._dspyo3_pm_token = manager_token(plugin_manager) if plugin_manager is not None else None

    @property
    def plugin_manager(self) -> PluginManager:
        """The plugin manager whose ``dspyo3_lm_call`` hook this LM calls."""
        return plugin_manager_for(self)

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        ref = _MANAGERS.get(getattr(self, "_dspyo3_pm_token", None) or "")  # plugin_manager_for(), inlined
        manager = ref() if ref is not None else None
        if manager is None:
            manager = _default_manager()
        return (manager._lm_caller or manager.lm_call_hook)(call=LMCall(self, prompt, messages, kwargs))

    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        import anyio.to_thread

        manager = self.plugin_manager
        if not wrappers_active(manager):  # nothing wraps the call: DSPy's own async path (cancellable, no thread)
            return await dspy.LM.acall(self, prompt, messages=messages, **kwargs)
        call = LMCall(lm=self, prompt=prompt, messages=messages, kwargs=kwargs, is_async=True)
        run = functools.partial(manager.hook.dspyo3_lm_call, call=call)
        return await anyio.to_thread.run_sync(run)

    def update_history(self, entry: dict[str, Any]) -> None:
        """Record ``entry`` as DSPy does, and hand its usage and cost to the running :class:`LMCall`."""
        call = _CURRENT.get()  # note_history and LMCall.record, inlined: this runs on every call
        if call is not None and call.lm is self:
            usage, cost = entry.get("usage"), entry.get("cost")
            call.usage = dict(usage) if usage else {}
            call.cost = float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None
        super().update_history(entry)
