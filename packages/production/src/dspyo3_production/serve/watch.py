"""Following the registry while serving: zero-downtime promote and rollback.

:func:`watch` runs beside the app (its lifespan starts it as a task and cancels it on shutdown). Every ``interval``
seconds it asks each program's :class:`~dspyo3_core.sources.ProgramSource` which version is current (in a worker
thread: that may read a disk or Redis). When the version moved (``dspyo3 registry promote`` / ``rollback``), it loads
the new one (in a thread), runs the program's smoke inputs through it if configured, and only then switches the
:class:`~dspyo3_production.serve.slots.ProgramSlot` to it; requests already running finish on the old module.

A version that fails to load, fails its smoke check, or has no fields to serve is not switched to: the old version
keeps serving and the slot records the version and why (``/readyz`` and ``GET /v1/programs`` show it). That version
is not tried again on every tick, only once the stage has moved on (to another version, or back) and returns to it.
A registry that cannot be read is reported the same way, and the served version stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dspyo3_core.secrets import redact
from dspyo3_core.sources import ProgramSource, ProgramSourceError

__all__ = ["SmokeError", "Runner", "check_once", "smoke_check", "watch"]

logger = logging.getLogger("dspyo3.production.serve")

Runner = Callable[[Any, Mapping[str, Any]], Awaitable[Any]]
"""How to run a module on inputs for a smoke check: ``await runner(module, inputs) -> prediction``."""


class SmokeError(Exception):
    """A new version's answer to the smoke inputs was missing or had an empty output field."""


async def _acall(module: Any, inputs: Mapping[str, Any]) -> Any:
    return await module.acall(**inputs)


def _output_fields(module: Any) -> list[str]:
    """The output fields a module's own signature declares (a ``Predict`` or ``ChainOfThought``), else none."""
    signature = getattr(module, "signature", None)
    if signature is None:
        predict = getattr(module, "predict", None)  # ChainOfThought keeps its signature on .predict
        signature = getattr(predict, "signature", None)
    fields = getattr(signature, "output_fields", None)
    return list(fields) if isinstance(fields, Mapping) else []


def _empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple, dict, set)):
        return not value
    return False


async def smoke_check(module: Any, inputs: Mapping[str, Any], *, runner: Runner | None = None,
                      timeout: float = 30.0, output_fields: Sequence[str] | None = None) -> None:
    """Run ``module`` on ``inputs`` and check it answered: a prediction with every output field non-empty.

    ``output_fields``: the fields the answer must have (default: those of the module's own signature, if any);
    every field the answer has must be non-empty too.

    Raises:
        SmokeError: the answer is missing a field, has an empty one, or is not a prediction.
        TimeoutError: no answer within ``timeout`` seconds.
        Exception: whatever the program raised.
    """
    prediction = await asyncio.wait_for((runner or _acall)(module, inputs), timeout)
    if prediction is None:
        raise SmokeError("the program returned nothing")
    keys = getattr(prediction, "keys", None)
    if not callable(keys):
        raise SmokeError(f"the program returned a {type(prediction).__name__}, not a dspy.Prediction")
    values = {key: prediction.get(key) for key in keys()}
    expected = _output_fields(module) if output_fields is None else list(output_fields)
    missing = [name for name in expected if name not in values]
    empty = [name for name, value in values.items() if _empty(value)]
    if not values or missing or empty:
        problem = "no output fields" if not values else "; ".join(
            part for part in (f"missing {', '.join(missing)}" if missing else "",
                              f"empty {', '.join(empty)}" if empty else "") if part)
        raise SmokeError(f"the answer to the smoke inputs has {problem}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (ProgramSourceError, SmokeError)):
        text = str(exc)
    elif isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        text = "no answer in time"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return redact(text.strip() or type(exc).__name__)


@dataclass
class _Follow:
    """The watcher's memory for one (program, arm)."""

    slot: Any
    source: ProgramSource
    arm: str
    smoke: Mapping[str, Any] | None
    failed: str | None = None  # a version that failed: not tried again until the source moves off it
    unreadable: str | None = None  # why the source cannot be read right now

    def served(self) -> str | None:
        arm = self.slot.a if self.arm == "a" else getattr(self.slot, "b", None)
        return None if arm is None else str(arm.version)


async def check_once(follow: _Follow, *, runner: Runner | None = None, smoke_timeout: float = 30.0) -> bool:
    """One look at one program's source: switch its slot to a new current version when it loads and passes the
    smoke check. Returns whether the slot was switched."""
    slot, source = follow.slot, follow.source
    try:
        version = await asyncio.to_thread(source.current)
    except Exception as exc:
        reason = f"cannot check {source.reference} for a new version: {_describe(exc)}"
        if reason != follow.unreadable:
            logger.warning("serve: %s: %s; still serving %s", slot.name, reason, follow.served())
            follow.unreadable = reason
            if follow.failed is None:
                slot.report(reason, None)
        return False
    if follow.unreadable is not None:
        follow.unreadable = None
        if follow.failed is None:
            slot.report(None)
    if version == follow.served():
        if follow.failed is not None:  # the stage came back (a rollback): the failed version is moot
            follow.failed = None
            slot.report(None)
        return False
    if version == follow.failed:
        return False
    follow.failed = None
    try:
        module = await asyncio.to_thread(source.load, version)
        if follow.smoke:
            from dspyo3_production.serve.schema import program_schema

            fields = program_schema(slot.name, module).output_fields  # what the app will serve (ValueError: none)
            await smoke_check(module, follow.smoke, runner=runner, timeout=smoke_timeout, output_fields=fields)
        slot.swap(version, module, follow.arm)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        reason = f"version {version} of {source.reference} was not switched to: {_describe(exc)}"
        logger.warning("serve: %s: %s; still serving %s", slot.name, reason, follow.served())
        follow.failed = version
        slot.report(reason, version)
        return False
    logger.info("serve: %s now serves %s (arm %s, from %s)", slot.name, version, follow.arm, source.reference)
    return True


async def watch(slots: Mapping[str, Any], sources: Mapping[str, ProgramSource], interval: float,
                smoke: Mapping[str, Mapping[str, Any] | None], *, b_sources: Mapping[str, ProgramSource] | None = None,
                runner: Runner | None = None, smoke_timeout: float = 30.0) -> None:
    """Follow every source until cancelled, switching ``slots[name]`` when ``sources[name]`` moves to a new version.

    Args:
        slots: program name -> :class:`~dspyo3_production.serve.slots.ProgramSlot` (``swap``, ``report``,
            ``a.version`` / ``b.version``).
        sources: program name -> the source of its main (A) arm; ``"NAME:b"`` -> the source of NAME's B arm (an
            A/B split). Names without a slot (or without a B arm) are skipped.
        interval: seconds between checks.
        smoke: program name -> inputs a new version must answer (every output field non-empty) before it is
            switched to; None or missing: no smoke check.
        b_sources: program name -> the source of its B arm, the same as ``"NAME:b"`` in ``sources``.
        runner: how to run a module for the smoke check (default ``await module.acall(**inputs)``); pass the
            app's request runner so the smoke call goes through the same LM and production stack.
        smoke_timeout: seconds a smoke call may take before the version counts as failed.
    """
    b_arms = dict(b_sources or {})
    b_arms.update({name[:-2]: source for name, source in sources.items() if name.endswith(":b")})
    follows = [_Follow(slots[name], source, "a", smoke.get(name)) for name, source in sources.items()
               if name in slots]
    follows += [_Follow(slots[name], source, "b", smoke.get(name)) for name, source in b_arms.items()
                if name in slots and getattr(slots[name], "b", None) is not None]
    if not follows:
        return
    while True:
        await asyncio.gather(*(check_once(f, runner=runner, smoke_timeout=smoke_timeout) for f in follows))
        await asyncio.sleep(interval)
