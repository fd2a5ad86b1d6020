"""Secrets are masked in one place: every log record, every CLI line and every error, whoever wrote it.

The end-to-end cases run the CLI against a loopback gateway that echoes the key it rejected in its 401 body (as
some gateways do) and look for the key in everything the commands print and log: it must be found 0 times.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dspyo3_core import secrets
from dspyo3_core.secrets import RedactingStream, Redactor, install_redaction, mask_secret, redact, register_secret
from dspyo3_core.testing import LMServer

KEY = "sk-live-0123456789abcdefECHOED9876"  # matches no credential-variable name: only registration can mask it


def test_registered_secrets_are_masked_in_text_and_json_forms() -> None:
    secret = "tok-Ü\"quoted\\slash-123456"
    assert redact(f"got {secret}") == f"got {secret}"  # unknown yet
    register_secret(secret)
    assert secret not in redact(f"got {secret}")
    assert mask_secret(secret) in redact(f"got {secret}")
    as_json = json.dumps({"error": f"bad key {secret}"})
    assert json.dumps(secret)[1:-1] not in redact(as_json)
    assert json.dumps(secret, ensure_ascii=False)[1:-1] not in redact(json.dumps(secret, ensure_ascii=False))
    register_secret("Bearer bearer-token-value-42")
    assert "bearer-token-value-42" not in redact("Authorization: Bearer bearer-token-value-42")
    register_secret("short", None, b"", "")  # ignored: would mask ordinary words
    assert redact("a short word") == "a short word"


def test_credential_variables_are_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", "env-token-abcdefgh1234")
    assert "env-token-abcdefgh1234" not in redact("token=env-token-abcdefgh1234")
    assert "env-token-abcdefgh1234" in Redactor(registered=False).values
    assert Redactor(from_env=False, registered=False).text("env-token-abcdefgh1234") == "env-token-abcdefgh1234"


def test_data_masks_secret_named_fields_only() -> None:
    out = Redactor(from_env=False, registered=False).data(
        {"api_key": "abcdefghijklmnop", "max_tokens": 5, "headers": {"Authorization": "Bearer abcdefghijklmnop"}})
    assert out == {"api_key": "****mnop", "max_tokens": 5, "headers": {"Authorization": "****mnop"}}


@pytest.fixture
def foreign_logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A library's logger with a handler of its own that does not propagate (as DSPy sets up its own)."""
    stream = io.StringIO()
    logger = logging.getLogger("some.library.test_secrets")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def test_installed_redaction_masks_every_log_record(foreign_logger: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = foreign_logger
    secret = "log-secret-value-0987654321"
    register_secret(secret)
    install_redaction()
    logger.error("request failed: %s", f"401 Incorrect API key provided: {secret}")
    try:
        raise RuntimeError(f"provider said: bad key {secret}")
    except RuntimeError:
        logger.exception("call failed")
    written = stream.getvalue()
    assert "request failed" in written and "provider said" in written
    assert secret not in written
    assert mask_secret(secret) in written


def test_redacting_stream_catches_a_secret_written_in_pieces() -> None:
    secret = "split-secret-abcdef123456"
    register_secret(secret)
    out = io.StringIO()
    stream = RedactingStream(out)
    stream.write("key=split-secret-")
    stream.write("abcdef123456 and more\nnext ")
    stream.flush()
    assert secret not in out.getvalue()
    assert out.getvalue() == f"key={mask_secret(secret)} and more\nnext "


def test_a_new_secret_invalidates_the_process_redactor() -> None:
    before = secrets.secrets_version()
    register_secret("fresh-secret-after-first-use-1")
    assert secrets.secrets_version() > before
    assert "fresh-secret-after-first-use-1" not in redact("fresh-secret-after-first-use-1")


# -- the CLI against a gateway that echoes the key -----------------------------------------------------------------


@pytest.fixture
def gateway() -> Iterator[LMServer]:
    with LMServer(api_key="the-right-key-is-not-this-one", echo_key=True) as server:
        yield server


@pytest.fixture
def cli_home(tmp_path: Path, cli_env: dict[str, str], gateway: LMServer) -> tuple[Path, dict[str, str]]:
    """A project whose profiles all point at the echoing gateway, production's JSON events on, an agent tool, a
    RAG corpus and an optimizer config."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "dspyo3.toml").write_text(f"""
[lm]
default = "gw"

[lm.profiles.gw]
provider = "openai-compatible"
model = "echo"
api_base = "{gateway.api_base}"
api_key = "{KEY}"
num_retries = 0

[lm.profiles.gwnative]
provider = "openai-compatible"
model = "echo"
api_base = "{gateway.api_base}"
api_key_env = "GATEWAY_CRED"
transport = "native"
num_retries = 0

[production]
metrics = false
log_events = true
""")
    docs = project / "docs"
    docs.mkdir()
    (docs / "sun.md").write_text("The Sun is a star at the centre of the Solar System.")
    from tests.optimize.conftest import gsm8k_run_toml

    (project / "optimize.toml").write_text(gsm8k_run_toml("leak", limit=4, dev_size=2, trials=[("one", 1, 0)]))
    env = {**cli_env, "DSPYO3_CONFIG": str(project / "dspyo3.toml"), "GATEWAY_CRED": KEY,
           "DSPYO3_RAG_DIR": str(project / "store"), "DSPY_CACHEDIR": str(project / "dspy-cache")}
    return project, env


COMMANDS = [
    ("lm", "test"),
    ("lm", "test", "gwnative"),
    ("lm", "test", "--json"),
    ("rag", "ask", "What is the Sun?", "--collection", "docs"),
    ("rag", "ask", "What is the Sun?", "--collection", "docs", "--profile", "gwnative"),
    ("agents", "run", "What is 2 + 2?", "--max-steps", "2"),
    ("agents", "run", "What is 2 + 2?", "--max-steps", "2", "--profile", "gwnative", "--json"),
    ("optimize", "run", "optimize.toml", "--no-progress"),
]


@pytest.mark.parametrize("debug", ["0", "1"])
def test_no_cli_command_shows_a_key_a_gateway_echoes(cli_home: tuple[Path, dict[str, str]], dspyo3_exe: str,
                                                     gateway: LMServer, debug: str) -> None:
    project, env = cli_home
    env = {**env, "DSPYO3_DEBUG": debug}
    indexed = subprocess.run([dspyo3_exe, "rag", "index", "docs", "--collection", "docs"], cwd=project, env=env,
                             capture_output=True, text=True, timeout=300)
    assert indexed.returncode == 0, indexed.stderr
    for command in COMMANDS:
        done = subprocess.run([dspyo3_exe, *command], cwd=project, env=env, capture_output=True, text=True,
                              timeout=300)
        output = done.stdout + done.stderr
        if command[0] != "optimize":  # an optimizer run counts failed LM calls as failed examples, and goes on
            assert done.returncode != 0, (command, output[-2000:])  # every other one failed on the 401
        assert KEY not in output, (command, output[-3000:])
        assert mask_secret(KEY) in output, (command, output[-2000:])  # the echoed key was there, masked
    assert gateway.rejected >= len(COMMANDS)  # the key really went out, and really came back in the error


def test_lms_core_builds_register_their_keys_and_secret_headers() -> None:
    from dspyo3_core.lm import HookedLM
    from dspyo3_core.native_lm import NativeLM

    NativeLM("openai/x", api_base="http://127.0.0.1:9/v1", api_key="native-key-registered-1",
             headers={"X-Api-Key": "header-secret-registered-2", "X-Trace": "not-a-secret-value"})
    HookedLM("openai/x", api_base="http://127.0.0.1:9/v1", api_key="hooked-key-registered-3")
    text = redact("native-key-registered-1 header-secret-registered-2 hooked-key-registered-3 not-a-secret-value")
    assert text == "****ed-1 ****ed-2 ****ed-3 not-a-secret-value"


def test_bytes_written_to_the_binary_buffer_are_masked_too() -> None:
    secret = "binary-secret-abcdef123456"
    register_secret(secret)
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    stream = RedactingStream(out)
    stream.write("text first\n")
    stream.buffer.write(f"bytes {secret}\n".encode())
    stream.flush()
    assert raw.getvalue() == f"text first\nbytes {mask_secret(secret)}\n".encode()


def test_cli_with_an_ascii_terminal_masks_what_click_writes_as_bytes(cli_env: dict[str, str], dspyo3_exe: str,
                                                                     tmp_path: Path) -> None:
    (tmp_path / "dspyo3.toml").write_text(f'[lm.profiles.p]\nprovider = "openai"\nmodel = "{KEY}"\n'
                                          f'api_key = "{KEY}"\n')
    env = {**cli_env, "DSPYO3_CONFIG": str(tmp_path / "dspyo3.toml"), "PYTHONIOENCODING": "ascii"}
    done = subprocess.run([dspyo3_exe, "lm", "show", "p"], env=env, capture_output=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert KEY.encode() not in output and mask_secret(KEY).encode() in output  # the model name carries it
