"""Core's plugin and every built-in LM provider pass the contracts plugin authors reuse (the other packages' plugins
are checked in tests/<package>/test_plugin.py)."""

from __future__ import annotations

from typing import Any, ClassVar

from dspyo3_core.testing.contracts import LMProviderContract, PluginContract


class TestCorePlugin(PluginContract):
    distribution = "dspyo3-core"
    entry_point = "core"


class TestOpenAIProvider(LMProviderContract):
    provider = "openai"
    openai_wire = True


class TestOpenAICompatibleProvider(LMProviderContract):
    provider = "openai-compatible"
    openai_wire = True


class TestNativeOpenAIProvider(LMProviderContract):
    provider = "native-openai"
    openai_wire = True


class TestNativeAnthropicProvider(LMProviderContract):
    provider = "native-anthropic"
    openai_wire = True


class TestAnthropicProvider(LMProviderContract):
    provider = "anthropic"


class TestCohereProvider(LMProviderContract):
    provider = "cohere"


class TestOllamaProvider(LMProviderContract):
    provider = "ollama"


class TestTogetherProvider(LMProviderContract):
    provider = "together"
    openai_wire = True


class TestAzureProvider(LMProviderContract):
    provider = "azure"
    openai_wire = True
    extra_params: ClassVar[dict[str, Any]] = {"api_version": "2024-10-21"}

    def test_round_trip_uses_the_deployment_path(self) -> None:
        import dspy

        from dspyo3_core import LMProfile, build_lm
        from dspyo3_core.testing import LMServer, chat_reply

        with LMServer() as server:
            server.script(chat_reply(answer="4"))
            profile = LMProfile("az", "azure", "my-deployment", api_base=server.url,
                                params={"cache": False, "num_retries": 0, "engine": "litellm",
                                        "api_version": "2024-10-21"}, api_key_in_file=self.secret)
            with dspy.context(lm=build_lm(profile, plugin_manager=self._manager())):
                assert dspy.Predict("question -> answer")(question="2 + 2?").answer == "4"
            assert server.requests[0]["_path"].startswith("/openai/deployments/my-deployment/chat/completions")
