"""Every expected failure is one line, `Error: what; how to fix`, exit status 1; no traceback unless asked for."""

from __future__ import annotations

import subprocess

import dspy
import dspy.utils.exceptions as dspy_errors
import pytest

from dspyo3_core.config import ConfigError
from dspyo3_core.failures import describe, expected


@pytest.mark.parametrize(("exc", "fix"), [
    (dspy_errors.LMAuthError("bad key", model="m"), "check the profile's key"),
    (dspy_errors.LMRateLimitError("slow down", model="m"), "wait and retry"),
    (dspy_errors.LMTimeoutError("too slow", model="m"), "raise the profile's timeout"),
    (dspy_errors.LMTransportError("refused", model="m"), "check api_base"),
    (dspy_errors.ContextWindowExceededError(model="m"), "shorten the input"),
    # a retry alone would get the cached unparseable answer back: the advice says how to ask again
    (dspy_errors.AdapterParseError("ChatAdapter", dspy.Signature("q -> a"), "no fields here"),
     "set cache = false in the LM profile"),
    (ModuleNotFoundError("no module", name="dspyo3_native"), "pip install ./crates/dspyo3-native"),
    (ModuleNotFoundError("no module", name="matplotlib.pyplot"), "pip install matplotlib"),
    (FileNotFoundError(2, "No such file or directory", "/data/x.jsonl"), "cannot use /data/x.jsonl"),
    (ConfigError("unknown LM profile 'x'; known profiles: a"), "known profiles: a"),
])
def test_expected_failures_name_what_and_the_fix(exc: BaseException, fix: str) -> None:
    assert expected(exc)
    line = describe(exc)
    assert fix in line and "\n" not in line


def test_a_bug_is_described_as_unexpected() -> None:
    exc = KeyError("x")
    assert not expected(exc)
    assert "unexpected; set DSPYO3_DEBUG=1 to see the traceback" in describe(exc)


def test_the_cli_reports_an_unreachable_lm_in_one_line(cli_env: dict[str, str], dspyo3_exe: str) -> None:
    env = {**cli_env, "DSPYO3_LM": "openai/x", "DSPYO3_LM_API_BASE": "http://127.0.0.1:9/v1",
           "DSPYO3_LM_API_KEY": "abc"}
    done = subprocess.run([dspyo3_exe, "agents", "run", "hi"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: LMTransportError:"), done.stderr
    assert "check api_base and that the server is running" in lines[0]
    debug = subprocess.run([dspyo3_exe, "agents", "run", "hi"], env={**env, "DSPYO3_DEBUG": "1"},
                           capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_an_unknown_command_group_names_its_package(cli_env: dict[str, str], dspyo3_exe: str) -> None:
    done = subprocess.run([dspyo3_exe, "rag", "search", "x"], env={**cli_env, "DSPYO3_DISABLE_PLUGINS": "rag"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "it comes with dspyo3-rag" in done.stderr and "pip install ./packages/rag" in done.stderr


def test_install_advice_names_the_checkout_or_the_index() -> None:
    from importlib import metadata

    from dspyo3_core.failures import install_advice

    # this environment installs the packages from the checkout: the advice names that directory, which pip accepts
    checkout = install_advice("dspyo3-rag", "chroma")
    direct = metadata.distribution("dspyo3-rag").read_text("direct_url.json") or ""
    if '"dir_info"' in direct:
        assert checkout.startswith("pip install '/") and checkout.endswith("packages/rag[chroma]'"), checkout
    else:
        assert checkout == "pip install 'dspyo3-rag[chroma]'"
    # a distribution installed from an index, or not at all: the index name
    assert install_advice("dspyo3-not-installed-anywhere", "x") == "pip install 'dspyo3-not-installed-anywhere[x]'"
    assert install_advice("click") == "pip install 'click'"
