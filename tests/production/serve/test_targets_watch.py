"""Program targets (``registry:qa@prod``, ``qa@1.2.0``, ``module:attr``, ``module:factory=saved.json``, ``NAME=``)
and the watcher that switches a served program on promote / rollback, refusing versions that fail to load or fail
their smoke check, plus the zero-downtime acceptance test: promote and roll back under a steady load."""

from __future__ import annotations

import asyncio
import hashlib
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dspy
import pytest

from dspyo3_core.plugins import PluginManager, core_only_manager
from dspyo3_core.sources import ProgramSource, ProgramSourceError
from dspyo3_core.testing.server import LMServer, chat_reply, last_user_text, parse_fields, prompt_text
from dspyo3_optimize import plugin as optimize_plugin
from dspyo3_optimize.registry import ProgramRegistry
from dspyo3_production.serve.slots import ProgramSlot
from dspyo3_production.serve.targets import LocalSource, SavedSource, default_name, resolve_target, split_name
from dspyo3_production.serve.watch import SmokeError, smoke_check, watch

MODULE = textwrap.dedent("""
    import dspy

    qa = dspy.Predict("question -> answer")

    def build_qa():
        return dspy.Predict("question -> answer")

    class Echo(dspy.Module):
        def __init__(self):
            super().__init__()
            self.predict = dspy.Predict("question -> answer")

    value = 3

    def needs_argument(x):
        return dspy.Predict("question -> answer")

    def not_a_module():
        return "text"
""")


@pytest.fixture
def target_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "serve_targets_mod.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "serve_targets_mod"


@pytest.fixture
def registry(tmp_path: Path) -> ProgramRegistry:
    """qa 1.0.0 ("version one") in prod, 1.0.1 ("version two") registered."""
    registry = ProgramRegistry(tmp_path / "reg")
    registry.register("qa", dspy.Predict(dspy.Signature("question -> answer", "Answer as version one.")),
                      factory="dspyo3_optimize.examples:qa_program")
    registry.register("qa", dspy.Predict(dspy.Signature("question -> answer", "Answer as version two.")))
    registry.promote("qa", "1.0.0", to="prod")
    return registry


@pytest.fixture
def with_optimize() -> PluginManager:
    manager = core_only_manager()
    manager.register(optimize_plugin, name="optimize", distribution="dspyo3-optimize")
    return manager


# -- targets --------------------------------------------------------------------------------------------------------


def test_split_name() -> None:
    assert split_name("support=registry:qa@prod") == ("support", "registry:qa@prod")
    assert split_name("bot=pkg.mod:build=saved.json") == ("bot", "pkg.mod:build=saved.json")
    assert split_name("pkg.mod:build=saved.json") == (None, "pkg.mod:build=saved.json")
    assert split_name("qa@prod") == (None, "qa@prod")


def test_module_attr_instance_and_factories(target_module: str) -> None:
    source = resolve_target(f"{target_module}:qa")
    assert isinstance(source, LocalSource) and isinstance(source, ProgramSource)
    assert (source.name, source.stage, source.current()) == ("qa", None, "local")
    import serve_targets_mod  # type: ignore[import-not-found]

    assert source.load("local") is serve_targets_mod.qa
    built = resolve_target(f"{target_module}:build_qa")
    assert default_name(built) == "build_qa" and isinstance(built.load("local"), dspy.Predict)
    named = resolve_target(f" support = {target_module}:Echo")
    assert named.name == "support" and isinstance(named.load("local"), dspy.Module)
    with pytest.raises(ProgramSourceError, match="only the version 'local'"):
        source.load("1.0.0")


@pytest.mark.parametrize(("attr", "message"), [
    ("nope", "has no attribute 'nope'"),
    ("value", "is a int, not a dspy.Module"),
    ("needs_argument", "factory callable without arguments"),
    ("not_a_module", "returned a str, not a dspy.Module"),
])
def test_module_attr_that_is_not_a_program(target_module: str, attr: str, message: str) -> None:
    source = resolve_target(f"{target_module}:{attr}")
    with pytest.raises(ProgramSourceError, match=message):
        source.load(source.current())


def test_module_that_cannot_be_imported_names_it_and_the_fix() -> None:
    source = resolve_target("no_such_module_for_serve:qa")
    with pytest.raises(ProgramSourceError) as info:
        source.load("local")
    message = str(info.value)
    assert "cannot import 'no_such_module_for_serve'" in message and "install the package" in message
    assert "\n" not in message


def test_saved_program_with_factory(target_module: str, tmp_path: Path) -> None:
    saved = tmp_path / "qa.json"
    dspy.Predict(dspy.Signature("question -> answer", "Saved instructions.")).save(str(saved))
    source = resolve_target(f"{target_module}:build_qa={saved}")
    assert isinstance(source, SavedSource)
    version = "sha256:" + hashlib.sha256(saved.read_bytes()).hexdigest()[:12]
    assert (source.name, source.current()) == ("build_qa", version)
    assert source.load(version).signature.instructions == "Saved instructions."
    dspy.Predict(dspy.Signature("question -> answer", "Replaced.")).save(str(saved))
    assert source.current() != version  # a replaced file is a new version
    with pytest.raises(ProgramSourceError, match="changed while loading"):
        source.load(version)
    assert source.load(source.current()).signature.instructions == "Replaced."


def test_saved_program_refuses_pickles_unsafe_state_and_missing_files(target_module: str, tmp_path: Path) -> None:
    pickled = tmp_path / "qa.pkl"
    pickled.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ProgramSourceError, match=r"pickles \(\.pkl\) can run arbitrary code"):
        resolve_target(f"{target_module}:build_qa={pickled}")
    with pytest.raises(ProgramSourceError, match="cannot read the saved program"):
        resolve_target(f"{target_module}:build_qa={tmp_path / 'missing.json'}")
    unsafe = tmp_path / "unsafe.json"
    unsafe.write_text('{"lm": null, "demos": [], "signature": {"instructions": "x"}, "config": {"api_base": "h"}}')
    source = resolve_target(f"{target_module}:build_qa={unsafe}")
    with pytest.raises(ProgramSourceError, match="learned state only"):
        source.load(source.current())
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    source = resolve_target(f"{target_module}:build_qa={garbage}")
    with pytest.raises(ProgramSourceError, match="not a program saved as JSON"):
        source.load(source.current())


@pytest.mark.parametrize("target", ["", "   ", "qa", "registry:qa", "registry:@prod", "1bad:attr", "pkg:",
                                    "pkg.mod:attr="])
def test_malformed_targets(target: str) -> None:
    with pytest.raises(ProgramSourceError):
        resolve_target(target)


def test_registry_targets_through_the_hook(registry: ProgramRegistry, with_optimize: PluginManager) -> None:
    for target in ("registry:qa@prod", "qa@prod"):
        source = resolve_target(target, registry=registry.url, plugin_manager=with_optimize)
        assert (source.name, source.stage, source.current()) == ("qa", "prod", "1.0.0")
        assert source.load("1.0.0").signature.instructions == "Answer as version one."
    renamed = resolve_target("support=registry:qa@prod", registry=registry.url, plugin_manager=with_optimize)
    assert renamed.name == "support" and renamed.current() == "1.0.0"  # still reads the registry's qa
    pinned = resolve_target("qa@1.0.1", registry=registry.url, plugin_manager=with_optimize)
    assert pinned.stage is None and pinned.current() == "1.0.1"
    with pytest.raises(ProgramSourceError, match="no program 'nope'"):
        resolve_target("registry:nope@prod", registry=registry.url, plugin_manager=with_optimize)


def test_registry_target_without_a_resolving_plugin_says_what_to_install(registry: ProgramRegistry) -> None:
    with pytest.raises(ProgramSourceError) as info:
        resolve_target("registry:qa@prod", registry=registry.url, plugin_manager=core_only_manager())
    assert "install dspyo3-optimize" in str(info.value)


# -- watcher --------------------------------------------------------------------------------------------------------


class Answer(dspy.Module):
    """Answers without an LM: ``answer`` is fixed (empty to fail a smoke check)."""

    def __init__(self, answer: str) -> None:
        super().__init__()
        self.signature = dspy.Signature("question -> answer")
        self.answer = answer

    async def aforward(self, question: str) -> dspy.Prediction:
        return dspy.Prediction(answer=self.answer)

    def forward(self, question: str) -> dspy.Prediction:
        return dspy.Prediction(answer=self.answer)


class Scripted:
    """A ProgramSource whose current version the test moves; ``modules`` maps a version to a module or an error."""

    def __init__(self, modules: Mapping[str, Any], version: str) -> None:
        self.name, self.reference, self.stage = "qa", "scripted:qa@prod", "prod"
        self.modules = dict(modules)
        self.version = version
        self.loads: list[str] = []
        self.readable = True

    def current(self) -> str:
        if not self.readable:
            raise ProgramSourceError("the registry at /nowhere cannot be read")
        return self.version

    def load(self, version: str) -> Any:
        self.loads.append(version)
        module = self.modules[version]
        if isinstance(module, Exception):
            raise module
        return module


async def _until(condition: Any, what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


async def _ticks(n: int = 5, interval: float = 0.01) -> None:
    await asyncio.sleep(interval * n)


def test_watch_switches_on_promote_and_back_on_rollback(registry: ProgramRegistry,
                                                        with_optimize: PluginManager) -> None:
    source = resolve_target("registry:qa@prod", registry=registry.url, plugin_manager=with_optimize)
    slot = ProgramSlot("qa", "1.0.0", source.load("1.0.0"), stage="prod")

    async def main() -> None:
        task = asyncio.create_task(watch({"qa": slot}, {"qa": source}, 0.01, {}))
        try:
            registry.promote("qa", "1.0.1", to="prod")
            await _until(lambda: slot.version == "1.0.1", "switch to 1.0.1")
            assert slot.a.module.signature.instructions == "Answer as version two."
            registry.rollback("qa", "prod")
            await _until(lambda: slot.version == "1.0.0", "roll back to 1.0.0")
            assert slot.a.module.signature.instructions == "Answer as version one."
            assert slot.status["problem"] is None
        finally:
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_version_that_fails_to_load_is_not_switched_to_and_readiness_says_why() -> None:
    source = Scripted({"1": Answer("one"), "2": ProgramSourceError("checksum mismatch for qa/2/program.json"),
                       "3": Answer("three")}, "1")
    slot = ProgramSlot("qa", "1", source.load("1"))
    source.loads.clear()

    async def main() -> None:
        task = asyncio.create_task(watch({"qa": slot}, {"qa": source}, 0.01, {}))
        try:
            source.version = "2"
            await _until(lambda: slot.status["problem"] is not None, "the failure recorded")
            status = slot.status
            assert status["version"] == "1" and status["ready"] and status["problem_version"] == "2"
            assert "checksum mismatch for qa/2/program.json" in status["problem"]
            await _ticks()
            assert source.loads == ["2"]  # not retried on every tick
            assert slot.a.module.answer == "one"
            source.version = "3"  # the stage moves on: the next version is tried and switched to
            await _until(lambda: slot.version == "3", "switch to 3")
            assert slot.status["problem"] is None
            source.version = "2"  # and back to 2 is a new change: tried again, and fails again
            await _until(lambda: source.loads.count("2") == 2, "2 retried once")
            await _until(lambda: slot.status["problem_version"] == "2", "failure recorded again")
            assert slot.version == "3"
            source.version = "3"  # rolled back to what is served: the recorded problem is moot
            await _until(lambda: slot.status["problem"] is None, "problem cleared")
        finally:
            task.cancel()

    asyncio.run(main())


def test_a_version_that_fails_its_smoke_check_is_not_switched_to() -> None:
    source = Scripted({"1": Answer("one"), "2": Answer(""), "3": Answer("three")}, "1")
    slot = ProgramSlot("qa", "1", source.load("1"))
    asked: list[Mapping[str, Any]] = []

    async def runner(module: Any, inputs: Mapping[str, Any]) -> Any:
        asked.append(inputs)
        return await module.acall(**inputs)

    async def main() -> None:
        task = asyncio.create_task(watch({"qa": slot}, {"qa": source}, 0.01, {"qa": {"question": "ping"}},
                                         runner=runner))
        try:
            source.version = "2"
            await _until(lambda: slot.status["problem_version"] == "2", "the smoke failure recorded")
            assert slot.version == "1" and "empty answer" in slot.status["problem"]
            source.version = "3"
            await _until(lambda: slot.version == "3", "switch to 3")
            assert asked and all(inputs == {"question": "ping"} for inputs in asked)
        finally:
            task.cancel()

    asyncio.run(main())


def test_an_unreadable_source_keeps_the_served_version_and_is_reported() -> None:
    source = Scripted({"1": Answer("one")}, "1")
    slot = ProgramSlot("qa", "1", source.load("1"))

    async def main() -> None:
        task = asyncio.create_task(watch({"qa": slot}, {"qa": source}, 0.01, {}))
        try:
            source.readable = False
            await _until(lambda: slot.status["problem"] is not None, "the problem recorded")
            assert "cannot be read" in slot.status["problem"] and slot.status["ready"] and slot.version == "1"
            source.readable = True
            await _until(lambda: slot.status["problem"] is None, "the problem cleared")
        finally:
            task.cancel()

    asyncio.run(main())


def test_watch_follows_the_b_arm_of_an_ab_split() -> None:
    a_source = Scripted({"1": Answer("one")}, "1")
    b_source = Scripted({"5": Answer("five"), "6": Answer("six")}, "5")
    slot = ProgramSlot("qa", "1", Answer("one"), b_version="5", b_module=Answer("five"), b_weight=0.5)

    async def main() -> None:
        task = asyncio.create_task(watch({"qa": slot}, {"qa": a_source, "qa:b": b_source}, 0.01, {}))
        try:
            b_source.version = "6"
            await _until(lambda: slot.b is not None and slot.b.version == "6", "the B arm switched")
            assert slot.version == "1" and slot.b is not None and slot.b.module.answer == "six"
            assert slot.b.arm == "b" and a_source.loads == []
        finally:
            task.cancel()

    asyncio.run(main())


def test_smoke_check() -> None:
    async def main() -> None:
        await smoke_check(Answer("yes"), {"question": "ping"})
        with pytest.raises(SmokeError, match="empty answer"):
            await smoke_check(Answer("  "), {"question": "ping"})

        class Nothing(dspy.Module):
            async def aforward(self, question: str) -> Any:
                return None

        with pytest.raises(SmokeError, match="returned nothing"):
            await smoke_check(Nothing(), {"question": "ping"})

        class Partial(dspy.Module):
            def __init__(self) -> None:
                super().__init__()
                self.signature = dspy.Signature("question -> answer, confidence")

            async def aforward(self, question: str) -> Any:
                return dspy.Prediction(answer="a")

        with pytest.raises(SmokeError, match="missing confidence"):
            await smoke_check(Partial(), {"question": "ping"})

    asyncio.run(main())


# -- acceptance: promote and roll back under a steady load ----------------------------------------------------------


def _by_version(request: dict[str, Any]) -> str:
    """The loopback LM answers differently per registered version (its instructions), so a body proves which
    version answered."""
    which = "two" if "version two" in prompt_text(request) else "one"
    question = parse_fields(last_user_text(request)).get("question", "")
    return chat_reply(answer=f"{which}: {question}")


@pytest.fixture
def version_server() -> Iterator[LMServer]:
    with LMServer(_by_version) as server:
        yield server


def test_promote_and_roll_back_ten_times_under_load(registry: ProgramRegistry, version_server: LMServer,
                                                    metrics: Any) -> None:
    """A real server (uvicorn, port 0) serves registry:qa@prod while 8 clients keep asking; prod is promoted to
    1.0.1 and rolled back to 1.0.0 ten times. No request fails, and every response's version header is the version
    whose instructions produced its answer."""
    import httpx
    import uvicorn

    from dspyo3_production.serve.app import create_app
    from dspyo3_production.serve.config import ProgramConfig, ServeConfig

    expected = {"1.0.0": "one", "1.0.1": "two"}
    lm = dspy.LM("openai/gpt-4o-mini", api_base=version_server.api_base, api_key="sk-test-abcdefghijklmnop",
                 cache=False, num_retries=0)
    config = ServeConfig(programs=(ProgramConfig("registry:qa@prod"),), watch_interval=0.05)
    previous_lm = dspy.settings.lm
    dspy.configure(lm=lm)
    app = create_app(config, metrics=metrics, registry=registry.url)
    slot = app.state.slots["qa"]
    results: list[tuple[int, str | None, dict[str, Any]]] = []
    counts = {"1.0.0": 0, "1.0.1": 0}

    async def client(base: str, index: int, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            n = 0
            while not stop.is_set():
                n += 1
                response = await http.post("/v1/programs/qa", json={"question": f"c{index} q{n}"})
                body = response.json()
                results.append((response.status_code, response.headers.get("x-dspyo3-program-version"), body))
                if response.status_code == 200:
                    counts[body["version"]] = counts.get(body["version"], 0) + 1

    async def switch_to(version: str, change: Any) -> None:
        await asyncio.to_thread(change)
        await _until(lambda: slot.version == version, f"serving {version}")
        answered = counts[version]
        await _until(lambda: counts[version] >= answered + 5, f"answers from {version}")  # under load

    async def main() -> None:
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        serving = asyncio.create_task(server.serve())
        await _until(lambda: server.started, "the server started")
        port = server.servers[0].sockets[0].getsockname()[1]
        stop = asyncio.Event()
        clients = [asyncio.create_task(client(f"http://127.0.0.1:{port}", i, stop)) for i in range(8)]
        try:
            await _until(lambda: counts["1.0.0"] >= 5, "answers before the first promotion")
            for _ in range(10):
                await switch_to("1.0.1", lambda: registry.promote("qa", "1.0.1", to="prod"))
                await switch_to("1.0.0", lambda: registry.rollback("qa", "prod"))
        finally:
            stop.set()
            await asyncio.gather(*clients)
            server.should_exit = True
            await serving

    try:
        asyncio.run(main())
    finally:
        dspy.configure(lm=previous_lm)
    failed = [(status, body) for status, _, body in results if status != 200]
    assert not failed, failed[:3]
    for _, header, body in results:
        assert header == body["version"]
        assert body["outputs"]["answer"].startswith(expected[body["version"]] + ":"), body
    assert counts["1.0.0"] >= 55 and counts["1.0.1"] >= 50
