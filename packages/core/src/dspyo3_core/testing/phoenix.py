"""A real OpenTelemetry collector on loopback for tests: Arize Phoenix (``phoenix serve``) on free ports.

Tests export spans to it over OTLP (HTTP/protobuf at :attr:`PhoenixProcess.otlp_http`, gRPC at
:attr:`PhoenixProcess.otlp_grpc`) and read them back through Phoenix's REST API with
:meth:`PhoenixProcess.spans`. Phoenix files spans under the project named by the resource attribute
``openinference.project.name``, so each test exports with its own project and reads only that one.

Phoenix is, in this order: the ``phoenix`` executable named by ``$DSPYO3_PHOENIX`` (run with the Python interpreter
beside it, so it may live in its own virtual environment), or the ``arize-phoenix`` package installed in this
environment (the hatch env pins it). It runs with a temporary working directory and SQLite database, telemetry and
external resources off, HTTP and gRPC bound to 127.0.0.1 (see :mod:`dspyo3_core.testing._phoenix_main`), in its own
process group, and is stopped with SIGTERM, then SIGKILL. Start-up takes 10-30 s (database migrations); a migrated
empty database is kept per Phoenix version under the system temporary directory and copied for the next start,
which is faster. Phoenix keeps what it receives: span kind and ``service.name`` are not stored.

>>> with PhoenixProcess() as phoenix:                     # doctest: +SKIP
...     export_to(phoenix.otlp_http, project="t1")
...     spans = phoenix.spans("t1", want=3)
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dspyo3_core.testing.services import ServiceUnavailable, free_port

__all__ = ["PHOENIX_ENV", "PhoenixProcess", "find_phoenix", "phoenix_server"]

PHOENIX_ENV = "DSPYO3_PHOENIX"
_MAIN = Path(__file__).with_name("_phoenix_main.py")
_UID = os.getuid() if hasattr(os, "getuid") else "user"
_TEMPLATES = Path(tempfile.gettempdir()) / f"dspyo3-phoenix-templates-{_UID}"  # migrated empty databases


def find_phoenix() -> str:
    """The Python interpreter that runs Phoenix: the one beside ``$DSPYO3_PHOENIX`` (a ``phoenix`` executable in a
    virtual environment's ``bin/``), else this interpreter when ``arize-phoenix`` is installed here.

    Raises :class:`ServiceUnavailable` (with how to get Phoenix) when there is none, and ``ValueError`` when
    ``$DSPYO3_PHOENIX`` names something that is not a ``phoenix`` executable with a Python beside it.
    """
    override = os.environ.get(PHOENIX_ENV, "").strip()
    if override:
        found = shutil.which(override)
        if found is None or not os.path.isfile(found):
            raise ValueError(f"{PHOENIX_ENV}={override!r} is not an executable file: point it at the `phoenix` "
                             f"script of a virtual environment with arize-phoenix installed, or unset it")
        bindir = Path(os.path.abspath(found)).parent  # the venv's bin/ (its python may be a symlink: keep it)
        for name in ("python", "python3"):
            python = bindir / name
            if python.is_file() and os.access(python, os.X_OK):
                return str(python)
        raise ValueError(f"{PHOENIX_ENV}={override!r}: no python interpreter beside it in {bindir}; point it at "
                         f"the `phoenix` script inside a virtual environment's bin/ directory")
    spec = importlib.util.find_spec("phoenix")  # located, not imported: importing Phoenix takes seconds
    locations = (spec.submodule_search_locations or []) if spec is not None else []
    if any(os.path.isfile(os.path.join(location, "server", "main.py")) for location in locations):
        return sys.executable
    raise ServiceUnavailable("Arize Phoenix is not installed: `pip install arize-phoenix` into this environment "
                             "(the hatch env pins it in hatch.toml), or set "
                             f"{PHOENIX_ENV} to the `phoenix` script of a virtual environment that has it")


class PhoenixProcess:
    """``phoenix serve`` on 127.0.0.1 with an empty temporary database, for the length of a ``with`` block.

    Attributes:
        base_url: ``http://127.0.0.1:<port>``, its web UI and REST API.
        otlp_http: the OTLP/HTTP traces endpoint (``<base_url>/v1/traces``).
        otlp_grpc: the OTLP/gRPC endpoint (``127.0.0.1:<port>``, insecure).
        database: the SQLite file Phoenix stores spans in (tests grep it for secrets).
    """

    def __init__(self, timeout: float = 90.0) -> None:
        self.python = find_phoenix()
        self.timeout = timeout
        self.http_port = free_port()
        self.grpc_port = free_port()
        while self.grpc_port == self.http_port:
            self.grpc_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        self.otlp_http = f"{self.base_url}/v1/traces"
        self.otlp_grpc = f"127.0.0.1:{self.grpc_port}"
        self._workdir = tempfile.TemporaryDirectory(prefix="dspyo3-phoenix-")
        self.workdir = Path(self._workdir.name)
        self.database = self.workdir / "phoenix.db"
        self.version: str | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def _env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("PHOENIX_", "OTEL_"))}  # nothing of the caller's Phoenix or OTel setup
        env.update(
            PHOENIX_HOST="127.0.0.1",
            PHOENIX_PORT=str(self.http_port),
            PHOENIX_GRPC_PORT=str(self.grpc_port),
            PHOENIX_WORKING_DIR=str(self.workdir),
            PHOENIX_SQL_DATABASE_URL=f"sqlite:///{self.database}",
            PHOENIX_TELEMETRY_ENABLED="false",
            PHOENIX_ALLOW_EXTERNAL_RESOURCES="false",
            PHOENIX_DISABLE_AGENT_ASSISTANT="true",
            PHOENIX_ENABLE_MCP_SERVER="false",
            PHOENIX_ENABLE_AUTH="false",
        )
        return env

    def start(self) -> PhoenixProcess:
        """Start Phoenix and wait until ``GET /readyz`` answers 200 (raises ``RuntimeError`` with its log tail if
        it exits or is not ready within ``timeout`` seconds)."""
        if self.process is not None and self.process.poll() is None:
            return self
        template = self._template()
        if template is not None:
            try:
                shutil.copyfile(template, self.database)
                self._spawn()
                return self._after_ready(used_template=True)
            except RuntimeError:
                self._kill()
                template.unlink(missing_ok=True)  # a bad template (corrupt, another version): start from scratch
                for leftover in self.workdir.iterdir():
                    if leftover.is_file():
                        leftover.unlink()
        self._spawn()
        return self._after_ready(used_template=False)

    def _spawn(self) -> None:
        self._log = open(self.workdir / "phoenix.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [self.python, str(_MAIN)], env=self._env(), cwd=self.workdir,
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stopping it stops any child too
        )

    def _after_ready(self, *, used_template: bool) -> PhoenixProcess:
        process = self.process
        assert process is not None
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                self._kill()
                raise RuntimeError(f"phoenix did not become ready on {self.base_url} within {self.timeout:g}s "
                                   f"(exit code {process.returncode}): {self.log_tail()}")
            time.sleep(0.1)
        try:
            with urllib.request.urlopen(f"{self.base_url}/arize_phoenix_version", timeout=5) as response:
                self.version = response.read().decode(errors="replace").strip()[:40] or None
        except (OSError, urllib.error.URLError):
            self.version = None
        if not used_template:
            self._save_template()
        return self

    def _template(self) -> Path | None:
        version = _installed_version(self.python)
        if version is None:
            return None
        path = _TEMPLATES / f"phoenix-{version}.db"
        try:
            folder = _TEMPLATES.stat()
            if hasattr(os, "getuid") and (folder.st_uid != os.getuid() or folder.st_mode & 0o022):
                return None  # someone else's (or a writable-by-others) folder: do not start Phoenix on its file
            return path if path.is_file() and path.stat().st_size > 0 else None
        except OSError:
            return None

    def _save_template(self) -> None:
        """Keep the freshly migrated, still empty database for the next start (SQLite's online backup, so a copy
        taken while Phoenix runs is consistent)."""
        version = _installed_version(self.python)
        if version is None or not self.database.is_file():
            return
        try:
            _TEMPLATES.mkdir(mode=0o700, parents=True, exist_ok=True)
            partial = _TEMPLATES / f"phoenix-{version}.db.{os.getpid()}.tmp"
            source = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5)
            try:
                target = sqlite3.connect(partial)
                try:
                    source.backup(target)
                finally:
                    target.close()
            finally:
                source.close()
            os.replace(partial, _TEMPLATES / f"phoenix-{version}.db")
        except (OSError, sqlite3.Error):
            pass  # only a faster next start is lost

    def log_tail(self, chars: int = 2000) -> str:
        """The end of Phoenix's own output (for failure messages)."""
        try:
            return (self.workdir / "phoenix.log").read_bytes()[-chars:].decode(errors="replace")
        except OSError:
            return ""

    def get_json(self, path: str, timeout: float = 10.0) -> Any:
        """``GET <base_url><path>`` decoded as JSON."""
        with urllib.request.urlopen(f"{self.base_url}{path}", timeout=timeout) as response:
            return json.load(response)

    def all_spans(self, project: str) -> list[dict[str, Any]]:
        """Every span Phoenix stored for ``project`` (all pages; ``[]`` if the project does not exist yet)."""
        quoted = urllib.parse.quote(project, safe="")
        spans: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = {"limit": "1000"}
            if cursor:
                query["cursor"] = cursor
            try:
                page = self.get_json(f"/v1/projects/{quoted}/spans?{urllib.parse.urlencode(query)}")
            except urllib.error.HTTPError as exc:
                if exc.code == 404:  # the project is created with its first span
                    return spans
                raise
            spans.extend(page.get("data") or [])
            cursor = page.get("next_cursor")
            if not cursor:
                return spans

    def spans(self, project: str, want: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The spans of ``project`` once at least ``want`` have arrived (Phoenix ingests asynchronously), polling
        until ``timeout`` seconds; raises ``TimeoutError`` naming how many arrived.

        Each span is Phoenix's JSON: ``name``, ``context`` {``trace_id``, ``span_id``}, ``parent_id``,
        ``start_time``, ``end_time``, ``status_code`` (``OK``/``ERROR``/``UNSET``), ``status_message``,
        ``attributes`` (flat dotted keys), ``events``.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.all_spans(project)
            if len(found) >= want:
                return found
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"phoenix exited (code {self.process.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(found)} of {want} spans arrived in phoenix project {project!r} within "
                                   f"{timeout:g}s")
            time.sleep(0.2)

    def _kill(self) -> None:
        if self.process is not None:
            _signal(self.process, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        """SIGTERM Phoenix's process group (SIGKILL after 15 s)."""
        if self.process is not None:
            _signal(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._kill()
            self.process = None
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()

    def close(self) -> None:
        """Stop Phoenix and delete its working directory (database included)."""
        self.stop()
        self._workdir.cleanup()

    def __enter__(self) -> PhoenixProcess:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def phoenix_server(timeout: float = 90.0) -> Iterator[PhoenixProcess]:
    """Run Phoenix on loopback for the block; yields the :class:`PhoenixProcess`."""
    with PhoenixProcess(timeout=timeout) as process:
        yield process


_VERSIONS: dict[str, str | None] = {}


def _installed_version(python: str) -> str | None:
    """The arize-phoenix version the interpreter ``python`` has (cached; None if it cannot tell)."""
    if python not in _VERSIONS:
        if python == sys.executable:
            try:
                from importlib.metadata import version

                _VERSIONS[python] = version("arize-phoenix")
            except Exception:  # metadata of a broken install: no template, nothing worse
                _VERSIONS[python] = None
        else:
            try:
                done = subprocess.run(
                    [python, "-c", "from importlib.metadata import version; print(version('arize-phoenix'))"],
                    capture_output=True, text=True, timeout=30, check=False)
                text = done.stdout.strip()
                _VERSIONS[python] = text if done.returncode == 0 and text.replace(".", "").isalnum() else None
            except (OSError, subprocess.TimeoutExpired):
                _VERSIONS[python] = None
    return _VERSIONS[python]


def _signal(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
