"""The LM-call hook point: a ``dspy.LM`` whose every call goes through ``dspyo3_lm_call``.

:class:`HookedLM` is a plain ``dspy.LM`` (same constructor, same LiteLLM/lm15 engines, same DSPy cache and
retries) except that each call is wrapped in an :class:`LMCall` and handed to the plugin manager's
``dspyo3_lm_call`` hook. Production features (cache tiers, metrics, cost, rate limits, circuit breakers)
install themselves as pluggy ``wrapper=True`` impls of that hook, so they compose by installing packages.

Async calls (``acall``, used by ``Module.acall``) stay on the event loop when every active wrapper is async-aware
(see :func:`~dspyo3_core.call.wrappers_async_aware`; dspyo3-production's is): the hook chain runs with
:attr:`LMCall.deferred` set, the innermost impl returns DSPy's own ``acall`` coroutine and the LM awaits what the
chain returns. Otherwise they run the hook chain in a worker thread, so plain generator wrappers keep working;
streaming (``dspy.streamify``) works both ways (the worker is an anyio thread that can send chunks back to the
event loop). When no plugin acts on the hook (see :func:`wrappers_active`) async calls take DSPy's own async path.
"""

from __future__ import annotations

import functools
from time import perf_counter
from typing import TYPE_CHECKING, Any

import dspy
import dspy.dsp.utils.settings as _dspy_settings

from dspyo3_core.call import (
    CURRENT_CALL,
    LMCall,
    current_call,
    manager_token,
    note_history,
    note_result,
    plugin_manager_for,
    wrappers_active,
    wrappers_async_aware,
)
from dspyo3_core.secrets import register_secret, secret_values

if TYPE_CHECKING:
    from dspyo3_core.plugins import PluginManager

# re-exported: where they have always been importable from (they live in the hook layer, dspyo3_core.call)
__all__ = ["HookedLM", "LMCall", "ainvoke_call", "current_call", "invoke_call", "lm_callbacks_wanted", "manager_token",
           "note_history", "note_result", "plugin_manager_for", "wrappers_active"]

_UNSET: Any = object()

try:  # DSPy 3.4's mark on the one ``messages=`` call an adapter makes (its LM-interface migration warning policy)
    from dspy.clients._deprecation import _adapter_call as _ADAPTER_CALL
    from dspy.clients._deprecation import adapter_message_call as _adapter_message_call
except ImportError:  # pragma: no cover - a DSPy without the mark: adapters no longer pass messages=
    _ADAPTER_CALL = None


def _routed_adapter_call(call: LMCall) -> Any:
    """A context marking ``call`` as its adapter's own when a wrapper routed the adapter's ``messages=`` call to
    another LM (dspyo3-production's fallback), else None. DSPy 3.4 exempts that call from its deprecation warning
    only for the LM the adapter called; the LM it was routed to receives the same call, so it gets the same mark.
    A direct ``lm(messages=...)`` call by user code carries no mark and keeps its warning."""
    if _ADAPTER_CALL is None or call.messages is None:
        return None
    origin = _ADAPTER_CALL.get()
    if origin is None or origin[1] is not call.messages or origin[0] is call.lm:
        return None
    return _adapter_message_call(call.lm, call.messages)


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


def invoke_call(call: LMCall) -> Any:
    """Run ``call``'s real call (cache, retries and transport included): core's innermost ``dspyo3_lm_call`` impl
    (registered as that impl directly, so the hook chain has one frame less per call)."""
    if call.deferred:
        return ainvoke_call(call)
    token = CURRENT_CALL.set(call)
    started = perf_counter()
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
        routed = _routed_adapter_call(call)
        if routed is not None:
            with routed:
                return _run_sync(run, call, no_history)
        return _run_sync(run, call, no_history)
    except BaseException as exc:
        call.error = exc
        raise
    finally:
        call.latency_s = perf_counter() - started
        CURRENT_CALL.reset(token)


async def ainvoke_call(call: LMCall) -> Any:
    """The async real call of a deferred :class:`LMCall` (what :func:`invoke_call` returns for one, unawaited):
    DSPy's own ``LM.acall`` (or NativeLM's), with ``call`` as :func:`current_call` while it runs."""
    token = CURRENT_CALL.set(call)
    started = perf_counter()
    try:
        native = getattr(call.lm, "_dspyo3_ainvoke", None)
        if native is not None:
            return await native(call.prompt, call.messages, call.kwargs)
        run = dspy.LM.acall if lm_callbacks_wanted(call.lm) else _LM_ACALL_UNWRAPPED
        routed = _routed_adapter_call(call)
        if routed is not None:
            with routed:
                return await _run_async(run, call)
        return await _run_async(run, call)
    except BaseException as exc:
        call.error = exc
        raise
    finally:
        call.latency_s = perf_counter() - started
        CURRENT_CALL.reset(token)


def _run_sync(run: Any, call: LMCall, no_history: Any) -> Any:
    # with history off there is no history entry to learn usage from: listen to the usage tracker instead
    if not no_history:
        return run(call.lm, call.prompt, messages=call.messages, **call.kwargs)
    with dspy.context(usage_tracker=_UsageTee(dspy.settings.get("usage_tracker"), call)):
        return run(call.lm, call.prompt, messages=call.messages, **call.kwargs)


async def _run_async(run: Any, call: LMCall) -> Any:
    if not dspy.settings.get("disable_history"):
        return await run(call.lm, call.prompt, messages=call.messages, **call.kwargs)
    with dspy.context(usage_tracker=_UsageTee(dspy.settings.get("usage_tracker"), call)):
        return await run(call.lm, call.prompt, messages=call.messages, **call.kwargs)


class _UsageTee:
    """A usage tracker that hands billed usage to an :class:`LMCall` and passes everything on to the tracker it
    stands in for (``dspy.track_usage``'s, if any)."""

    def __init__(self, inner: Any, call: LMCall) -> None:
        self._inner = inner
        self._call = call

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        self._call.record({"usage": usage_entry})  # priced as a history entry would be
        if self._inner is not None:
            self._inner.add_usage(lm, usage_entry)

    def __getattr__(self, name: str) -> Any:
        if self._inner is None:
            raise AttributeError(name)
        return getattr(self._inner, name)


_LM_CALL_UNWRAPPED = getattr(dspy.LM.__call__, "__wrapped__", dspy.LM.__call__)  # without DSPy's callback dispatch
_LM_ACALL_UNWRAPPED = getattr(dspy.LM.acall, "__wrapped__", dspy.LM.acall)


class HookedLM(dspy.LM):
    """``dspy.LM`` that routes every call through the ``dspyo3_lm_call`` hook.

    Construct it like ``dspy.LM`` (``HookedLM("openai/gpt-4o-mini", api_key=...)``), or from a profile with
    :func:`dspyo3_core.lm_factory.build_lm`. ``plugin_manager`` defaults to the process-wide manager.
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
        return plugin_manager_for(self).lm_call_hook(call=LMCall(self, prompt, messages, kwargs))

    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        import anyio.to_thread

        manager = self.plugin_manager
        if not wrappers_active(manager):  # nothing wraps the call: DSPy's own async path (cancellable, no thread)
            return await dspy.LM.acall(self, prompt, messages=messages, **kwargs)
        call = LMCall(lm=self, prompt=prompt, messages=messages, kwargs=kwargs, is_async=True)
        if wrappers_async_aware(manager):  # the chain runs here, on the loop; the call itself is awaited below
            call.deferred = True
            return await manager.lm_call_hook(call=call)
        run = functools.partial(manager.hook.dspyo3_lm_call, call=call)
        return await anyio.to_thread.run_sync(run)

    def update_history(self, entry: dict[str, Any]) -> None:
        """Record ``entry`` as DSPy does, and hand its usage and cost to the running :class:`LMCall`."""
        call = CURRENT_CALL.get()
        if call is not None and call.lm is self:
            call.record(entry)
        super().update_history(entry)
