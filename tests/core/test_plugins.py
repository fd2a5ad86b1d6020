"""Plugin loading: entry points, allow/block lists, tracing, broken plugins, typos, duplicates."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dspyo3_core import (
    DuplicateNameError,
    EmbedderSpec,
    PluginError,
    PluginLoadWarning,
    PluginManager,
    hookimpl,
)

FIRST_PARTY = {"core", "types", "rag", "agents", "async", "production", "optimize"}


def loaded(manager: PluginManager) -> dict[str, str]:
    return {info.name: info.status for info in manager.plugins()}


def test_every_first_party_package_loads_through_entry_points() -> None:
    manager = PluginManager()
    statuses = loaded(manager)
    assert set(statuses) >= FIRST_PARTY
    assert all(statuses[name] == "loaded" for name in FIRST_PARTY)
    infos = {info.name: info for info in manager.plugins()}
    assert infos["rag"].distribution == "dspyo3-rag"
    assert infos["rag"].version == "0.1.0"
    assert "dspyo3_lm_call" in infos["core"].hooks


def test_loading_is_lazy_and_happens_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from dspyo3_core import plugins

    calls = []
    real = plugins._entry_points

    def counting(group: str) -> object:
        calls.append(group)
        return real(group)

    monkeypatch.setattr(plugins, "_entry_points", counting)
    manager = PluginManager()
    assert calls == []
    manager.plugins()
    manager.plugins()
    assert manager.hook.dspyo3_register_commands is not None
    assert len(calls) == 1


def test_allowlist_keeps_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPYO3_PLUGINS", "rag")
    statuses = loaded(PluginManager())
    assert statuses["rag"] == "loaded"
    assert statuses["core"] == "loaded"
    assert statuses["agents"] == "disabled"


def test_blocklist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPYO3_DISABLE_PLUGINS", "agents, optimize")
    manager = PluginManager()
    statuses = loaded(manager)
    assert statuses["agents"] == statuses["optimize"] == "disabled"
    assert statuses["rag"] == "loaded"
    assert "DSPYO3_DISABLE_PLUGINS" in {i.name: i for i in manager.plugins()}["agents"].error


def test_trace_writes_hook_calls_to_stderr(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DSPYO3_TRACE_PLUGINS", "1")
    manager = PluginManager()
    manager.hook.dspyo3_register_embedders(register=lambda spec: None)
    assert "dspyo3_register_embedders" in capsys.readouterr().err


def test_broken_plugin_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_distribution: Any) -> None:
    root = make_distribution(tmp_path / "site", "broken-plugin", "broken_plugin", "raise ImportError('boom')\n")
    monkeypatch.syspath_prepend(str(root))
    with pytest.warns(PluginLoadWarning, match=r"'broken_plugin' \(broken-plugin\).*ImportError: boom"):
        manager = PluginManager()
        statuses = loaded(manager)
    assert statuses["broken_plugin"] == "failed"
    assert statuses["core"] == "loaded"
    sys.modules.pop("broken_plugin", None)


def test_broken_plugin_is_an_error_when_strict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_distribution: Any
) -> None:
    root = make_distribution(tmp_path / "site", "broken-plugin", "broken_plugin2", "raise ImportError('boom')\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("DSPYO3_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="broken_plugin2"):
        PluginManager().plugins()


def test_misspelt_hook_is_reported_with_a_suggestion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_distribution: Any
) -> None:
    source = (
        "from dspyo3_core import hookimpl\n\n"
        "@hookimpl\n"
        "def dspyo3_register_comands(cli):\n"
        "    pass\n"
    )
    root = make_distribution(tmp_path / "site", "typo-plugin", "typo_plugin", source)
    monkeypatch.syspath_prepend(str(root))
    with pytest.warns(PluginLoadWarning, match="did you mean 'dspyo3_register_commands'"):
        manager = PluginManager()
        statuses = loaded(manager)
    assert statuses["typo_plugin"] == "failed"
    manager.pluggy.check_pending()  # nothing unknown is left registered
    sys.modules.pop("typo_plugin", None)


def test_same_entry_point_name_from_two_distributions_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_distribution: Any
) -> None:
    monkeypatch.syspath_prepend(str(make_distribution(tmp_path / "a", "dist-a", "clash_a", "", entry_point="clash")))
    monkeypatch.syspath_prepend(str(make_distribution(tmp_path / "b", "dist-b", "clash_b", "", entry_point="clash")))
    with pytest.raises(PluginError, match=r"'clash' is declared by both dist-\w and dist-\w"):
        PluginManager().plugins()


def _embedder_plugin(name: str) -> object:
    class Plugin:
        @hookimpl
        def dspyo3_register_embedders(self, register: Callable[[EmbedderSpec], None]) -> None:
            register(EmbedderSpec(name, factory=lambda: None, description="test"))

    return Plugin()


def test_duplicate_registered_name_names_both_distributions(plugin_manager: PluginManager) -> None:
    plugin_manager.register(_embedder_plugin("minilm"), name="one", distribution="dspyo3-one")
    plugin_manager.register(_embedder_plugin("minilm"), name="two", distribution="dspyo3-two")
    with pytest.raises(DuplicateNameError) as info:
        plugin_manager.registry("dspyo3_register_embedders")
    assert "dspyo3-one" in str(info.value) and "dspyo3-two" in str(info.value)


def test_registry_records_the_distribution(plugin_manager: PluginManager) -> None:
    plugin_manager.register(_embedder_plugin("minilm"), name="one", distribution="dspyo3-one")
    registry = plugin_manager.registry("dspyo3_register_embedders")
    assert registry.names() == ["minilm"]
    assert registry.distribution_of("minilm") == "dspyo3-one"
    with pytest.raises(KeyError, match="unknown embedder 'nope'; known: minilm"):
        registry.get("nope")


def test_registering_the_wrong_type_is_a_clear_error(plugin_manager: PluginManager) -> None:
    class Plugin:
        @hookimpl
        def dspyo3_register_tools(self, register: Callable[[object], None]) -> None:
            register({"name": "search"})

    plugin_manager.register(Plugin(), name="bad", distribution="dspyo3-bad")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry = plugin_manager.registry("dspyo3_register_tools")
    assert len(registry) == 0
    assert any("pass a dspyo3_core.registry.ToolSpec instead" in str(w.message) for w in caught)


def test_core_registers_the_builtin_providers(plugin_manager: PluginManager) -> None:
    names = set(plugin_manager.lm_providers().names())
    assert {"openai", "anthropic", "cohere", "ollama", "together", "azure", "openai-compatible"} <= names


def test_importing_the_lm_call_functions_by_name_does_not_make_a_plugin_implement_them() -> None:
    import types

    from dspyo3_core.lm import invoke_call

    module = types.ModuleType("user_plugin")
    module.invoke_call = invoke_call  # type: ignore[attr-defined]  # a plugin module that uses core's function
    manager = PluginManager(entry_points=False)
    manager.register(module, name="user_plugin")
    manager.load()
    assert manager.pluggy.get_plugin("user_plugin") is module  # not dropped for an "unknown hook invoke_call"
    assert not manager.hook.dspyo3_lm_call.get_hookimpls()  # and not taken for an LM-call impl either


SCAN_PROBE = """
import json, sys
from importlib import metadata
from dspyo3_core import plugins
sys.path.insert(0, sys.argv[1])
sys.path.append(sys.argv[2])
out = {}
for group in ("dspyo3", "console_scripts", "pytest11"):
    scanned = plugins._scan_entry_points(group)
    out[group] = [None if scanned is None else [[e.name, e.value, e.dist, e.version] for e in scanned],
                  [[e.name, e.value, e.dist.name, e.dist.version] for e in metadata.entry_points(group=group)]]
print(json.dumps(out))
"""


def test_entry_point_scan_finds_what_importlib_metadata_finds(tmp_path: Path, make_distribution: Any) -> None:
    """The start-up scan of ``sys.path`` lists the same entry points, distributions and versions as
    ``importlib.metadata`` (a shadowed copy of a distribution further down ``sys.path`` is not listed twice).
    In a fresh interpreter, as the CLI runs: this process has imported libraries that add distribution finders."""
    first = make_distribution(tmp_path / "a", "dist-a", "scan_a", "", entry_point="one")
    shadowed = make_distribution(tmp_path / "b", "dist-a", "scan_b", "", entry_point="two")
    done = subprocess.run([sys.executable, "-c", SCAN_PROBE, str(first), str(shadowed)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    for group, (scanned, expected) in json.loads(done.stdout).items():
        assert scanned == expected, group
        assert expected
    names = [name for name, *_ in json.loads(done.stdout)["dspyo3"][0]]
    assert "one" in names and "two" not in names and "core" in names


def test_entry_point_scan_leaves_zip_paths_to_importlib_metadata(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import zipfile

    from dspyo3_core import plugins

    archive = tmp_path / "plugins.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("zipped_plugin.py", "VALUE = 42\n")
        zf.writestr("zipped_plugin-1.2.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: zipped-plugin\nVersion: 1.2\n")
        zf.writestr("zipped_plugin-1.2.dist-info/entry_points.txt", "[dspyo3_test]\nzipped = zipped_plugin:VALUE\n")
    monkeypatch.syspath_prepend(str(archive))
    assert plugins._scan_entry_points("dspyo3_test") is None
    [ep] = plugins._entry_points("dspyo3_test")
    assert (ep.name, ep.value, ep.dist, ep.version) == ("zipped", "zipped_plugin:VALUE", "zipped-plugin", "1.2")
    assert ep.load() == 42


def test_entry_point_scan_leaves_eggs_to_importlib_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dspyo3_core import plugins

    egg = tmp_path / "egged-1.0.egg"
    (egg / "EGG-INFO").mkdir(parents=True)
    (egg / "EGG-INFO" / "entry_points.txt").write_text("[dspyo3_test]\negged = egged\n")
    monkeypatch.syspath_prepend(str(egg))
    assert plugins._scan_entry_points("dspyo3_test") is None


def test_entry_point_values_load_like_importlib_metadata() -> None:
    from dspyo3_core import plugins

    assert plugins._load_value("os.path:join") is __import__("os").path.join
    assert plugins._load_value("dspyo3_core.plugins:PluginManager.load [extra]") is PluginManager.load
    assert plugins._load_value("dspyo3_core.plugins") is plugins
