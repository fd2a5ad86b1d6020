"""Contract tests every dspyo3 plugin should pass (in the manner of langchain's standard tests).

Subclass a contract in your own test module and fill in the class attributes; pytest collects the inherited
``test_*`` methods::

    from dspyo3_core.testing.contracts import PluginContract

    class TestMyPlugin(PluginContract):
        distribution = "dspyo3-myplugin"
        entry_point = "myplugin"

``LMProviderContract`` checks a registered LM provider: its spec, the ``dspy.LM`` it builds, that keys never
appear in reprs or saved state, and (for OpenAI-wire providers) a real round trip to the loopback server.
"""

from __future__ import annotations

import importlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import click
import pytest
from click.testing import CliRunner

from dspyo3_core.config import LMProfile, build_lm
from dspyo3_core.hookspecs import PROJECT
from dspyo3_core.plugins import REGISTRY_HOOKS, PluginManager
from dspyo3_core.plugins import core_only_manager as core_plugin_manager
from dspyo3_core.registry import LMProviderSpec
from dspyo3_core.testing.server import LMServer, chat_reply


class PluginContract:
    """Contract for a plugin distribution that registers through the ``dspyo3`` entry-point group.

    Attributes:
        distribution: the distribution name (``dspyo3-rag``).
        entry_point: the entry-point name it declares in the ``dspyo3`` group (``rag``).
    """

    distribution: ClassVar[str]
    entry_point: ClassVar[str]

    def _entry_point(self) -> metadata.EntryPoint:
        dist = metadata.distribution(self.distribution)
        matches = [ep for ep in dist.entry_points if ep.group == PROJECT and ep.name == self.entry_point]
        assert matches, f"{self.distribution} declares no {PROJECT!r} entry point named {self.entry_point!r}"
        return matches[0]

    def _plugin(self) -> Any:
        return self._entry_point().load()

    def _manager(self) -> PluginManager:
        manager = core_plugin_manager()
        if self.entry_point != "core":
            manager.register(self._plugin(), name=self.entry_point, distribution=self.distribution)
        return manager

    def test_entry_point_loads(self) -> None:
        plugin = self._plugin()
        assert plugin is not None

    def test_hooks_are_known_and_validated(self) -> None:
        manager = self._manager()
        manager.pluggy.check_pending()  # raises on an implementation of an unknown hook
        info = {i.name: i for i in manager.plugins()}[self.entry_point]
        assert info.status == "loaded", info.error
        assert info.hooks, f"{self.distribution} implements no dspyo3 hook"
        assert all(hook.startswith("dspyo3_") for hook in info.hooks)

    def test_registries_fill_without_error(self) -> None:
        manager = self._manager()
        for hook_name in REGISTRY_HOOKS:
            registry = manager.registry(hook_name)
            for name in registry.names():
                assert registry.distribution_of(name) in {self.distribution, "dspyo3-core"}

    def test_commands_have_help(self) -> None:
        cli = click.Group(name="dspyo3")
        alone = PluginManager(entry_points=False)  # only this plugin, so only its commands
        alone.register(self._plugin(), name=self.entry_point, distribution=self.distribution)
        alone.register_commands(cli)
        runner = CliRunner()
        for name in cli.commands:
            result = runner.invoke(cli, [name, "--help"])
            assert result.exit_code == 0, result.output
            assert (cli.commands[name].help or "").strip(), f"command {name!r} has no help text"

    def test_distribution_is_typed(self) -> None:
        module = importlib.import_module(self._entry_point().value.split(":")[0].split(".")[0])
        assert module.__file__ is not None
        marker = Path(module.__file__).parent / "py.typed"  # where type checkers look, editable install or not
        assert marker.is_file(), f"{self.distribution} ships no py.typed marker next to {module.__name__}"
        assert module.__doc__, f"{module.__name__} has no module docstring"


class LMProviderContract:
    """Contract for one registered LM provider.

    Attributes:
        provider: the provider name.
        model: a model id to build with.
        openai_wire: the provider speaks a wire format the loopback server answers (OpenAI chat completions, or
            Anthropic messages for the native transport), so the round trip against it is run.
        extra_params: more profile params the round trip needs (e.g. Azure's ``api_version``).
    """

    provider: ClassVar[str]
    model: ClassVar[str] = "test-model"
    openai_wire: ClassVar[bool] = False
    extra_params: ClassVar[dict[str, Any]] = {}
    secret: ClassVar[str] = "sk-dspyo3-contract-SECRET-0000"

    def _manager(self) -> PluginManager:
        return core_plugin_manager()

    def _spec(self) -> LMProviderSpec:
        return self._manager().lm_providers().get(self.provider)

    def test_spec_is_complete(self) -> None:
        spec = self._spec()
        assert spec.name == self.provider
        assert spec.description, "give the provider a one-line description"

    def _clear_keys(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # a developer's real keys must neither change the outcome nor be sent to the loopback server
        for spec in self._manager().lm_providers():
            for name in (*spec.key_env, *spec.extra_env.values()):
                monkeypatch.delenv(name, raising=False)

    def test_builds_lm_without_leaking_key(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._clear_keys(monkeypatch)
        spec = self._spec()
        for name in spec.key_env:
            monkeypatch.setenv(name, self.secret)
        profile = LMProfile("contract", self.provider, self.model, api_base="http://127.0.0.1:9/v1",
                            api_key_in_file=None if spec.key_env else self.secret)
        lm = build_lm(profile, plugin_manager=self._manager())
        assert lm.model.endswith(self.model)
        if spec.model_prefix:
            assert lm.model.startswith(spec.model_prefix + "/")
        assert self.secret not in repr(profile)
        assert self.secret not in json.dumps(profile.describe(spec))
        try:
            saved = json.dumps(lm.dump_state(), default=str)
        except TypeError as exc:  # an LM that refuses to be saved (a native engine on its own api_base)
            saved = str(exc)
        assert self.secret not in saved

    def test_round_trip_on_loopback(self, monkeypatch: pytest.MonkeyPatch) -> None:
        if not self.openai_wire:
            pytest.skip(f"{self.provider} does not speak the OpenAI wire format")
        import dspy

        self._clear_keys(monkeypatch)
        with LMServer() as server:
            server.script(chat_reply(answer="4"))
            engine = {"engine": "litellm"} if self._spec().transport == "litellm" else {}
            profile = LMProfile("contract", self.provider, self.model, api_base=server.api_base,
                                params={"cache": False, "num_retries": 0, **engine, **self.extra_params},
                                api_key_in_file=self.secret)
            lm = build_lm(profile, plugin_manager=self._manager())
            with dspy.context(lm=lm):
                prediction = dspy.Predict("question -> answer")(question="2 + 2?")
            assert prediction.answer == "4"
            assert len(server.requests) == 1
            headers = server.requests[0]["_headers"]  # a bearer token (OpenAI), api-key (Azure), x-api-key (Anthropic)
            assert self.secret in (headers.get("authorization", "").removeprefix("Bearer "), headers.get("api-key"),
                                   headers.get("x-api-key"))


class VectorStoreContract:
    """What every vector store must do. Subclass it in a test module and implement :meth:`make_store`.

    The store is duck-typed (the ``dspyo3_rag.stores.VectorStore`` interface): errors must be ``ValueError``
    subclasses whose message names the problem, and a rejected call must leave the collection as it was.
    """

    def make_store(self, tmp_path: Path) -> Any:
        """A fresh, empty store (local directory under ``tmp_path``, or a server started by the test)."""
        raise NotImplementedError

    @pytest.fixture
    def store(self, tmp_path: Path) -> Any:
        made = self.make_store(tmp_path)
        yield made
        close = getattr(made, "close", None)
        if callable(close):
            close()

    @staticmethod
    def _vec(*values: float) -> list[float]:
        return [float(v) for v in values]

    @pytest.fixture
    def filled(self, store: Any) -> Any:
        store.create_collection("docs", 3)
        store.upsert("docs", ["a", "b", "c"], [self._vec(1, 0, 0), self._vec(0, 1, 0), self._vec(0.9, 0.1, 0)],
                     [{"lang": "en", "year": 2020}, {"lang": "fr", "year": 2021}, {"lang": "en", "year": 2022}])
        return store

    def test_collections_are_created_listed_and_dropped(self, store: Any) -> None:
        store.create_collection("one", 4)
        store.create_collection("two", 8)
        assert {"one", "two"} <= set(store.collections())
        assert store.dimension("two") == 8
        store.create_collection("one", 4, exist_ok=True)
        with pytest.raises(ValueError, match="already exists"):
            store.create_collection("one", 4)
        store.drop_collection("one")
        assert "one" not in store.collections()

    def test_search_ranks_by_similarity_and_returns_metadata(self, filled: Any) -> None:
        hits = filled.search("docs", self._vec(1, 0, 0), k=2)
        assert [h.id for h in hits] == ["a", "c"]
        assert hits[0].score >= hits[1].score
        assert hits[0].metadata == {"lang": "en", "year": 2020}
        assert filled.count("docs") == 3

    def test_upsert_replaces_and_delete_removes(self, filled: Any) -> None:
        filled.upsert("docs", ["a"], [self._vec(0, 0, 1)], [{"lang": "de", "year": 1999}])
        assert filled.count("docs") == 3
        assert filled.search("docs", self._vec(0, 0, 1), k=1)[0].metadata["lang"] == "de"
        filled.delete("docs", ["a", "missing"])
        assert filled.count("docs") == 2

    def test_metadata_filters(self, filled: Any) -> None:
        assert {h.id for h in filled.search("docs", self._vec(1, 0, 0), k=3, filter={"lang": "en"})} == {"a", "c"}
        assert [h.id for h in filled.search("docs", self._vec(1, 0, 0), k=3, filter={"year": [2021]})] == ["b"]

    def test_namespaces_are_isolated(self, filled: Any) -> None:
        filled.upsert("docs", ["a"], [self._vec(0, 0, 1)], [{"lang": "x"}], namespace="tenant-2")
        assert filled.count("docs", namespace="tenant-2") == 1
        assert filled.count("docs") == 3
        assert [h.id for h in filled.search("docs", self._vec(0, 0, 1), k=5, namespace="tenant-2")] == ["a"]

    def test_bad_input_is_a_clear_error_and_changes_nothing(self, filled: Any) -> None:
        with pytest.raises(ValueError, match="unknown collection 'nope'"):
            filled.search("nope", self._vec(1, 0, 0))
        with pytest.raises(ValueError, match="has 2 numbers; collection 'docs' holds 3-dimensional"):
            filled.upsert("docs", ["d", "e"], [self._vec(1, 0, 0), self._vec(1, 0)])
        with pytest.raises(ValueError, match="3-dimensional"):
            filled.search("docs", self._vec(1, 0))
        with pytest.raises(ValueError, match="filter on 'langauge'"):
            filled.search("docs", self._vec(1, 0, 0), filter={"langauge": "en"})
        with pytest.raises(ValueError, match="not JSON"):
            filled.upsert("docs", ["f"], [self._vec(1, 0, 0)], [{"when": object()}])
        assert filled.count("docs") == 3, "nothing was written by the rejected calls"
        assert {h.id for h in filled.search("docs", self._vec(1, 1, 1), k=10)} == {"a", "b", "c"}

    def test_scroll_and_migration(self, filled: Any, tmp_path: Path) -> None:
        from dspyo3_rag.stores import migrate

        other = self.make_store(tmp_path / "other")
        try:
            assert migrate(filled, other, "docs", batch_size=2) == 3
            assert other.count("docs") == 3
            assert [h.id for h in other.search("docs", self._vec(1, 0, 0), k=1)] == ["a"]
            assert sorted(p[0] for p in other.scroll("docs")) == ["a", "b", "c"]
        finally:
            close = getattr(other, "close", None)
            if callable(close):
                close()

    def test_euclid_scores_are_higher_is_closer_and_migration_keeps_the_distance(self, store: Any,
                                                                                 tmp_path: Path) -> None:
        from dspyo3_rag.stores import migrate

        store.create_collection("geo", 2, distance="euclid")
        # no all-zero vector: Pinecone refuses one
        store.upsert("geo", ["near", "far"], [self._vec(0, 0.5), self._vec(3, 4)])
        hits = store.search("geo", self._vec(0.1, 0), k=2)
        assert [h.id for h in hits] == ["near", "far"]
        assert hits[0].score > hits[1].score
        assert abs(hits[1].score - (-((2.9**2 + 4**2) ** 0.5))) < 1e-3, "score = minus the euclidean distance"
        other = self.make_store(tmp_path / "geo-copy")
        try:
            migrate(store, other, "geo")
            assert other.distance("geo") == "euclid"
            assert [h.id for h in other.search("geo", self._vec(0.1, 0), k=2)] == ["near", "far"]
        finally:
            close = getattr(other, "close", None)
            if callable(close):
                close()

    def test_filter_values_and_query_vectors_are_checked(self, filled: Any) -> None:
        filled.upsert("docs", ["d"], [self._vec(0, 0, 1)], [{"lang": "en", "year": 2020, "ok": True, "w": 0.5,
                                                            "none": None}])
        assert [h.id for h in filled.search("docs", self._vec(0, 0, 1), k=1, filter={"ok": [True]})] == ["d"]
        assert [h.id for h in filled.search("docs", self._vec(0, 0, 1), k=1, filter={"w": 0.5})] == ["d"]
        assert filled.search("docs", self._vec(0, 0, 1), k=1)[0].metadata["none"] is None
        bad_filters: list[dict[str, Any]] = [{"lang": None}, {"lang": []}, {"lang": {"$ne": "x"}}]
        for bad in bad_filters:
            with pytest.raises(ValueError, match="filter on 'lang'"):
                filled.search("docs", self._vec(1, 0, 0), filter=bad)
        with pytest.raises(ValueError, match="NaN"):
            filled.search("docs", [float("nan"), 0.0, 0.0])
        assert filled.search("docs", self._vec(0, 0, 0)) == [], "a zero vector matches nothing under cosine"
        assert len(filled.search("docs", self._vec(1, 1, 1), k=100)) == 4, "k beyond the collection"
