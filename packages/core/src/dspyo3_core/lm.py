"""The LM-call hook point: a ``dspy.LM`` whose every call goes through ``dspyo3_lm_call``.

:class:`HookedLM` is a plain ``dspy.LM`` (same constructor, same LiteLLM/lm15 engines, same DSPy cache and
retries) except that each call is wrapped in an :class:`LMCall` and handed to the plugin manager's
``dspyo3_lm_call`` hook. Production features (cache tiers, metrics, cost, rate limits, circuit breakers)
install themselves as pluggy ``wrapper=True`` impls of that hook, so they compose by installing packages.

Async calls (``acall``, used by ``Module.acall``) run the same hook chain in a worker thread, so wrappers are
written once, as plain generators; streaming (``dspy.streamify``) keeps working because the worker is an anyio
thread that can send chunks back to the event loop.
"""

from __future__ import annotations

import functools
import re
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dspy

if TYPE_CHECKING:
    from dspyo3_core.plugins import PluginManager


# token -> manager, held weakly: an LM does not keep a manager (and its plugins) alive.
_MANAGERS: weakref.WeakValueDictionary[str, PluginManager] = weakref.WeakValueDictionary()
_SECRET_NAME = re.compile(
    r"^(api[_-]?key|authorization|proxy-authorization|password|secret|token|access[_-]?token)$"
    r"|[_-](key|token|secret|password)$",
    re.I,
)


def masked(value: Any, name: str = "") -> Any:
    """``value`` with every secret-named entry (``api_key``, ``Authorization``, ``*_token``, ...) masked, through
    nested dicts and lists; ``max_tokens`` and other non-secret names are left alone."""
    from dspyo3_core.config import mask_secret

    if name and _SECRET_NAME.search(name) and isinstance(value, (str, bytes)):
        return mask_secret(value.decode(errors="replace") if isinstance(value, bytes) else value)
    if isinstance(value, dict):
        return {k: masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(masked(v) for v in value)
    return value


def _remember(manager: PluginManager) -> str:
    token = f"pm-{id(manager):x}"
    _MANAGERS[token] = manager
    return token


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
    """

    lm: dspy.BaseLM
    prompt: Any = None
    messages: Any = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    is_async: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

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
        """Run the real call (cache, retries and transport included). Core's innermost impl."""
        native = getattr(self.lm, "_dspyo3_invoke", None)
        if native is not None:
            return native(self.prompt, self.messages, self.kwargs)
        return dspy.LM.__call__(self.lm, self.prompt, messages=self.messages, **self.kwargs)


def plugin_manager_for(lm: Any) -> PluginManager:
    """The plugin manager an LM built with ``plugin_manager=`` routes through (else the process-wide one)."""
    from dspyo3_core.plugins import get_plugin_manager

    manager = _MANAGERS.get(getattr(lm, "_dspyo3_pm_token", None) or "")
    return manager if manager is not None else get_plugin_manager()


class HookedLM(dspy.LM):
    """``dspy.LM`` that routes every call through the ``dspyo3_lm_call`` hook.

    Construct it like ``dspy.LM`` (``HookedLM("openai/gpt-4o-mini", api_key=...)``), or from a profile with
    :func:`dspyo3_core.config.build_lm`. ``plugin_manager`` defaults to the process-wide manager.
    """

    def __init__(self, model: str, *args: Any, plugin_manager: PluginManager | None = None, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        # A token, not the manager itself: dspy.LM.copy() deep-copies and pickles LMs, the manager is shared.
        self._dspyo3_pm_token = _remember(plugin_manager) if plugin_manager is not None else None

    @property
    def plugin_manager(self) -> PluginManager:
        """The plugin manager whose ``dspyo3_lm_call`` hook this LM calls."""
        return plugin_manager_for(self)

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        call = LMCall(lm=self, prompt=prompt, messages=messages, kwargs=kwargs)
        return self.plugin_manager.hook.dspyo3_lm_call(call=call)

    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        import anyio.to_thread

        call = LMCall(lm=self, prompt=prompt, messages=messages, kwargs=kwargs, is_async=True)
        run = functools.partial(self.plugin_manager.hook.dspyo3_lm_call, call=call)
        return await anyio.to_thread.run_sync(run)
