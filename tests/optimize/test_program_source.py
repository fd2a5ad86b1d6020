"""Registry programs as ProgramSources (the ``dspyo3_resolve_program`` hook): ``current()`` follows promote and
rollback, ``load()`` keeps the registry's checks and trust rules, unknown names fail at resolve time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dspy
import pytest

from dspyo3_core.plugins import core_only_manager
from dspyo3_core.sources import ProgramSource, ProgramSourceError
from dspyo3_optimize import plugin as optimize_plugin
from dspyo3_optimize.programs.source import RegistrySource, parse_reference, resolve_reference
from dspyo3_optimize.registry import ProgramRegistry


def _program(instructions: str) -> Any:
    return dspy.Predict(dspy.Signature("question -> answer", instructions))


@pytest.fixture
def registry(tmp_path: Path) -> ProgramRegistry:
    registry = ProgramRegistry(tmp_path / "reg")
    registry.register("qa", _program("First."), factory="dspyo3_optimize.examples:qa_program")
    registry.register("qa", _program("Second."))
    registry.promote("qa", "1.0.0", to="prod")
    return registry


def test_parse_reference() -> None:
    assert parse_reference("registry:qa@prod") == ("qa", "prod")
    assert parse_reference("qa@1.2.0") == ("qa", "1.2.0")
    assert parse_reference("pkg.mod:attr") is None
    assert parse_reference("pkg.mod:factory=saved.json") is None
    assert parse_reference("qa") is None
    with pytest.raises(ProgramSourceError, match="registry:qa@prod"):
        parse_reference("registry:qa")


def test_current_follows_promote_and_rollback(registry: ProgramRegistry) -> None:
    source = resolve_reference("registry:qa@prod", {"registry": registry.url})
    assert isinstance(source, RegistrySource) and isinstance(source, ProgramSource)
    assert (source.name, source.stage, source.reference) == ("qa", "prod", "registry:qa@prod")
    assert source.current() == "1.0.0"
    assert source.load("1.0.0").signature.instructions == "First."
    registry.promote("qa", "1.0.1", to="prod")
    assert source.current() == "1.0.1"
    assert source.load("1.0.1").signature.instructions == "Second."
    registry.rollback("qa", "prod")
    assert source.current() == "1.0.0"
    pinned = resolve_reference("qa@1.0.1", {"registry": registry.url})
    assert pinned is not None and pinned.stage is None and pinned.current() == "1.0.1"


def test_each_load_is_a_new_module(registry: ProgramRegistry) -> None:
    """A program given as a module is copied per version: loading 1.0.1 never changes the module serving 1.0.0."""
    mine = _program("Mine.")
    source = resolve_reference("qa@prod", {"registry": registry.url, "program": mine})
    assert source is not None
    first, second = source.load("1.0.0"), source.load("1.0.1")
    assert first is not second and first is not mine
    assert (first.signature.instructions, second.signature.instructions, mine.signature.instructions) == \
        ("First.", "Second.", "Mine.")


def test_untrusted_recorded_factory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSPYO3_TRUSTED_PROGRAMS", raising=False)
    marker = tmp_path / "ran"
    (tmp_path / "source_evil_mod.py").write_text(
        f"import pathlib\ndef build():\n    pathlib.Path({str(marker)!r}).touch()\n"
        "    import dspy\n    return dspy.Predict('question -> answer')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = ProgramRegistry(tmp_path / "reg")
    registry.register("qa", _program("Loaded."), factory="source_evil_mod:build")
    source = resolve_reference("registry:qa@dev", {"registry": registry.url})
    assert source is not None
    with pytest.raises(ProgramSourceError) as info:
        source.load(source.current())
    assert "not trusted" in str(info.value) and "--trust-registry" in str(info.value)
    assert not marker.exists()
    trusted = resolve_reference("registry:qa@dev", {"registry": registry.url, "trust_registry": True})
    assert trusted is not None and trusted.load("1.0.0").signature.instructions == "Loaded." and marker.exists()


def test_tampered_version_is_refused_with_the_registry_message(registry: ProgramRegistry) -> None:
    source = resolve_reference("qa@prod", {"registry": registry.url})
    assert source is not None
    blob = Path(registry.url) / "qa" / "versions" / "1.0.1" / "program.json"
    blob.write_text(blob.read_text().replace("Second.", "Evil."))
    with pytest.raises(ProgramSourceError, match="checksum mismatch"):
        source.load("1.0.1")


def test_unknown_name_stage_or_version(registry: ProgramRegistry) -> None:
    with pytest.raises(ProgramSourceError, match="no program 'nope'"):
        resolve_reference("registry:nope@prod", {"registry": registry.url})
    with pytest.raises(ProgramSourceError, match="stage 'staging' of 'qa' is empty"):
        resolve_reference("qa@staging", {"registry": registry.url})
    with pytest.raises(ProgramSourceError, match=r"no version '9\.9\.9'"):
        resolve_reference("qa@9.9.9", {"registry": registry.url})


def test_hook_resolves_registry_references_only(registry: ProgramRegistry) -> None:
    manager = core_only_manager()
    manager.register(optimize_plugin, name="optimize", distribution="dspyo3-optimize")
    hook = manager.hook.dspyo3_resolve_program
    source = hook(reference="registry:qa@prod", options={"registry": registry.url})
    assert isinstance(source, RegistrySource) and source.current() == "1.0.0"
    assert hook(reference="pkg.mod:attr", options={"registry": registry.url}) is None
