"""LM profiles: files, precedence, environment overrides, providers, and keys that never leak."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from dspyo3_core import ConfigError, PluginManager, build_lm, load_settings, mask_secret
from dspyo3_core.testing import LMServer

SECRET = "sk-live-THIS-MUST-NEVER-APPEAR-1234"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_no_profile_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="DSPYO3_LM=provider/model"):
        load_settings().profile()


def test_project_file_overrides_user_file(isolated_config: Path) -> None:
    write(isolated_config / "user-config" / "config.toml", """
[lm]
default = "fast"
[lm.profiles.fast]
provider = "openai"
model = "gpt-4o-mini"
[lm.profiles.smart]
provider = "anthropic"
model = "claude-sonnet-4-5"
""")
    write(isolated_config / "dspyo3.toml", """
[lm]
default = "smart"
[lm.profiles.fast]
provider = "openai"
model = "gpt-4.1-nano"
temperature = 0.0
""")
    settings = load_settings()
    assert settings.default_profile == "smart"
    assert settings.profiles["fast"].model == "gpt-4.1-nano"
    assert settings.profiles["fast"].params == {"temperature": 0.0}
    assert settings.profiles["smart"].provider == "anthropic"
    assert len(settings.files) == 2


def test_env_selects_a_profile_or_defines_one(isolated_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(isolated_config / "dspyo3.toml", '[lm.profiles.local]\nprovider = "ollama"\nmodel = "llama3"\n')
    monkeypatch.setenv("DSPYO3_LM", "local")
    assert load_settings().profile().name == "local"
    monkeypatch.setenv("DSPYO3_LM", "together/meta-llama/Llama-3-8b")
    profile = load_settings().profile()
    assert (profile.provider, profile.model, profile.source) == ("together", "meta-llama/Llama-3-8b", "DSPYO3_LM")
    monkeypatch.setenv("DSPYO3_LM", "nonsense")
    with pytest.raises(ConfigError, match="neither a profile name"):
        load_settings()


@pytest.mark.parametrize(
    ("provider", "model", "expected"),
    [
        ("openai", "gpt-4o-mini", "openai/gpt-4o-mini"),
        ("anthropic", "claude-sonnet-4-5", "anthropic/claude-sonnet-4-5"),
        ("cohere", "command-r", "cohere/command-r"),
        ("ollama", "llama3", "ollama_chat/llama3"),
        ("together", "meta-llama/Llama-3-8b", "together_ai/meta-llama/Llama-3-8b"),
    ],
)
def test_providers_map_to_litellm_routes(
    provider: str, model: str, expected: str, plugin_manager: PluginManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dspyo3_core import LMProfile

    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "COHERE_API_KEY", "TOGETHERAI_API_KEY"):
        monkeypatch.setenv(name, SECRET)
    lm = build_lm(LMProfile("p", provider, model), plugin_manager=plugin_manager)
    assert lm.model == expected
    if provider == "ollama":
        assert lm.kwargs["api_base"] == "http://localhost:11434"
    else:
        assert lm.kwargs["api_key"] == SECRET


def test_azure_needs_api_base_and_reads_api_version(
    plugin_manager: PluginManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dspyo3_core import LMProfile

    with pytest.raises(ConfigError, match="needs api_base"):
        build_lm(LMProfile("az", "azure", "my-deployment"), plugin_manager=plugin_manager)
    monkeypatch.setenv("AZURE_API_VERSION", "2024-10-21")
    monkeypatch.setenv("AZURE_API_KEY", SECRET)
    lm = build_lm(LMProfile("az", "azure", "my-deployment", api_base="https://x.openai.azure.com"),
                  plugin_manager=plugin_manager)
    assert lm.model == "azure/my-deployment"
    assert lm.kwargs["api_version"] == "2024-10-21"


def test_unknown_provider_and_settings_are_named(isolated_config: Path, plugin_manager: PluginManager) -> None:
    from dspyo3_core import LMProfile

    with pytest.raises(ConfigError, match="unknown provider 'openia'; known providers: anthropic"):
        build_lm(LMProfile("p", "openia", "gpt"), plugin_manager=plugin_manager)
    write(isolated_config / "dspyo3.toml", '[lm.profiles.p]\nprovider = "openai"\nmodel = "m"\ntemprature = 1\n')
    with pytest.raises(ConfigError, match=r"unknown settings \['temprature'\]"):
        load_settings()


def test_broken_toml_names_the_file(isolated_config: Path) -> None:
    write(isolated_config / "dspyo3.toml", "[lm\nbroken")
    with pytest.raises(ConfigError, match=r"dspyo3\.toml is not valid TOML"):
        load_settings()


def test_env_key_overrides_the_file_key(isolated_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(isolated_config / "dspyo3.toml",
          '[lm.profiles.p]\nprovider = "openai"\nmodel = "m"\napi_key = "sk-from-file-000000"\n')
    manager_spec = PluginManager(entry_points=True).lm_providers().get("openai")
    profile = load_settings().profile("p")
    assert profile.resolve_key(manager_spec) == ("sk-from-file-000000", "config file")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert profile.resolve_key(manager_spec) == (SECRET, "OPENAI_API_KEY")


def test_mask_secret() -> None:
    assert mask_secret(SECRET) == "****1234"
    assert mask_secret("short") == "****"
    assert mask_secret(None) == "(none)"


def run(exe: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_never_prints_keys(isolated_config: Path, cli_env: dict[str, str], dspyo3_exe: str) -> None:
    write(isolated_config / "dspyo3.toml",
          '[lm]\ndefault = "p"\n[lm.profiles.p]\nprovider = "openai"\nmodel = "gpt-4o-mini"\n')
    cli_env["OPENAI_API_KEY"] = SECRET
    shown = run(dspyo3_exe, cli_env, "lm", "show", "p")
    listed = run(dspyo3_exe, cli_env, "lm", "list", "--json")
    table = run(dspyo3_exe, cli_env, "lm", "list")
    for result in (shown, listed, table):
        assert result.returncode == 0, result.stderr
        assert SECRET not in result.stdout + result.stderr
    data = json.loads(shown.stdout)
    assert data["api_key"] == "****1234" and data["api_key_source"] == "OPENAI_API_KEY"
    assert json.loads(listed.stdout)["profiles"][0]["default"] is True


def test_lm_list_says_when_commands_would_have_no_default_profile(isolated_config: Path, cli_env: dict[str, str],
                                                                  dspyo3_exe: str) -> None:
    cli_env.pop("DSPYO3_LM", None)
    profiles = '[lm.profiles.a]\nprovider = "openai"\nmodel = "m"\n[lm.profiles.b]\nprovider = "openai"\nmodel = "n"\n'
    write(isolated_config / "dspyo3.toml", profiles)
    none = run(dspyo3_exe, cli_env, "lm", "list")
    assert none.returncode == 0 and "Note: no default profile" in none.stderr and "a, b" in none.stderr
    shown = run(dspyo3_exe, cli_env, "lm", "show")  # a command without --profile says the same, not "none exists"
    assert shown.returncode == 1 and "no default LM profile; name one of a, b in [lm] default" in shown.stderr
    write(isolated_config / "dspyo3.toml", '[lm]\ndefault = "nothere"\n' + profiles)
    wrong = run(dspyo3_exe, cli_env, "lm", "list")
    assert wrong.returncode == 0 and "[lm] default names 'nothere', which is not a profile" in wrong.stderr
    write(isolated_config / "dspyo3.toml", '[lm]\ndefault = "a"\n' + profiles)
    assert "Note:" not in run(dspyo3_exe, cli_env, "lm", "list").stderr


def test_lm_test_against_the_loopback_server(
    isolated_config: Path, cli_env: dict[str, str], dspyo3_exe: str, lm_server: LMServer
) -> None:
    write(isolated_config / "dspyo3.toml", f"""
[lm.profiles.local]
provider = "openai-compatible"
model = "tiny"
api_base = "{lm_server.api_base}"
""")
    cli_env["DSPYO3_LM_API_KEY"] = SECRET
    lm_server.script("OK")
    ok = run(dspyo3_exe, cli_env, "lm", "test", "local", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["reply"] == "OK"
    assert lm_server.requests[0]["_headers"]["authorization"] == f"Bearer {SECRET}"
    from dspyo3_core.testing import Reply

    lm_server.script(Reply.server_error(500, f"echoing the key {SECRET} back"))
    failed = run(dspyo3_exe, cli_env, "lm", "test", "local")
    assert failed.returncode == 1
    assert "FAIL local" in failed.stderr
    assert SECRET not in failed.stdout + failed.stderr


def test_lm_providers_command(cli_env: dict[str, str], dspyo3_exe: str) -> None:
    result = run(dspyo3_exe, cli_env, "lm", "providers", "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["openai-compatible"]["needs_api_base"] is True
    assert rows["anthropic"]["distribution"] == "dspyo3-core"


def test_check_keys_names_the_key_the_table_the_known_keys_and_a_close_match() -> None:
    from dspyo3_core.config import check_keys

    check_keys({"a": 1}, {"a", "b"}, "[t]")  # known keys pass
    with pytest.raises(ConfigError) as one:
        check_keys({"registri": 1, "executor": 2}, ["registry", "executor"], "[optimize]", "dspyo3.toml")
    assert str(one.value) == ("dspyo3.toml: unknown key 'registri' (did you mean 'registry'?) in [optimize]; known "
                              "keys: executor, registry")
    with pytest.raises(ConfigError) as two:
        check_keys({"zz": 1, "colour": 2}, ["color"], "[x]")
    assert str(two.value) == "unknown keys 'colour' (did you mean 'color'?), 'zz' in [x]; known keys: color"


@pytest.mark.parametrize("xdg", [None, "", "   ", "/tmp/xdg-base"])
def test_user_directories_match_platformdirs(xdg: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    import platformdirs

    from dspyo3_core.config import _user_dir

    for variable in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        if xdg is None:
            monkeypatch.delenv(variable, raising=False)
        else:
            monkeypatch.setenv(variable, xdg)
    assert _user_dir("config") == platformdirs.user_config_dir("dspyo3")
    assert _user_dir("cache") == platformdirs.user_cache_dir("dspyo3")
