"""CLI start-up imports no DSPy: ``dspyo3 --help``, ``dspyo3 plugins`` and ``dspyo3 lm list`` load every plugin
and print their answer without importing ``dspy``, ``litellm`` or ``pydantic`` (which take most of a second).

Checked in a fresh interpreter (this test process has imported DSPy long ago), by what is in ``sys.modules``,
never by how long it took."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("dspy", "litellm", "pydantic")

# the console script's code path, then which heavy modules got imported and what the command printed
PROBE = f"""
HEAVY = {HEAVY!r}
import contextlib, io, json, sys
from dspyo3_core.cli import main
out = io.StringIO()
code = 0
with contextlib.redirect_stdout(out):
    try:
        main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code or 0
heavy = sorted(name for name in sys.modules if name in HEAVY)
print(json.dumps({{"code": code, "heavy": heavy, "out": out.getvalue()}}))
"""


def probe(env: dict[str, str], cwd: Path, *args: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize(("args", "expected"), [
    (("--help",), "plugins"),
    (("plugins",), "dspyo3-production"),
    (("lm", "list"), "gpt-4o-mini"),
])
def test_cli_start_up_does_not_import_dspy(isolated_config: Path, cli_env: dict[str, str], args: tuple[str, ...],
                                         expected: str) -> None:
    (isolated_config / "dspyo3.toml").write_text('[lm]\ndefault = "fast"\n[lm.profiles.fast]\nprovider = "openai"\n'
                                                 'model = "gpt-4o-mini"\n')
    result = probe(cli_env, isolated_config, *args)
    assert result["code"] == 0, result
    assert expected in str(result["out"])  # the command ran, with every plugin loaded
    assert result["heavy"] == [], f"dspyo3 {' '.join(args)} imported {result['heavy']}"


@pytest.mark.parametrize(("args", "expected"), [
    (("cache", "stats", "--json", "--redis-url", "{redis_url}"), '"entries": 0'),
    (("production", "status"), "configured: False"),
    (("agents", "tools", "list", "--json"), '"calculator"'),
])
def test_commands_that_run_no_program_do_not_import_dspy(isolated_config: Path, cli_env: dict[str, str],
                                                         redis_url: str, args: tuple[str, ...],
                                                         expected: str) -> None:
    """``cache stats``, ``production status`` and ``agents tools list`` answer without importing DSPy or LiteLLM
    (they talk to Redis, read the config and list the tool registry; none of them runs a DSPy program)."""
    result = probe(cli_env, isolated_config, *(arg.format(redis_url=redis_url) for arg in args))
    assert result["code"] == 0, result
    assert expected in str(result["out"]), result["out"]
    heavy = [name for name in result["heavy"] if name in ("dspy", "litellm")]  # type: ignore[union-attr]
    assert heavy == [], f"dspyo3 {' '.join(args)} imported {heavy}"


@pytest.mark.parametrize("package", ["dspyo3_core", "dspyo3_async", "dspyo3_production"])
def test_every_public_name_still_imports(cli_env: dict[str, str], tmp_path: Path, package: str) -> None:
    """The packages import their public names on first use: each name of ``__all__`` resolves, importing the
    package alone imports no DSPy, and unknown names are an AttributeError."""
    code = f"""
import importlib, json, sys
module = importlib.import_module({package!r})
light = not any(name.split(".")[0] in {HEAVY!r} for name in sys.modules)
missing = [name for name in module.__all__ if getattr(module, name, None) is None]
listed = set(module.__all__) <= set(dir(module))
try:
    module.not_a_name
    unknown = "no error"
except AttributeError as exc:
    unknown = str(exc)
print(json.dumps({{"light": light, "missing": missing, "listed": listed, "unknown": unknown}}))
"""
    done = subprocess.run([sys.executable, "-c", code], env=cli_env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {"light": True, "missing": [], "listed": True,
                      "unknown": f"module {package!r} has no attribute 'not_a_name'"}


def test_startup_benchmark_shape(tmp_path: Path) -> None:
    """``benchmarks/startup.py`` prints its figures as JSON (the shape only: figures are never asserted)."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "startup.py"
    argv = [sys.executable, str(script), "--runs", "1", "--top", "3", "--json", str(tmp_path / "s.json")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == json.loads((tmp_path / "s.json").read_text())
    commands = ["--help", "plugins", "lm list"]
    assert sorted(result["median_ms"]) == sorted(result["under_target"]) == sorted(commands)
    assert sorted(result["anchor_median_ms"]) == ["import dspy", "python -c pass"]
    for command in commands:
        imports = result["importtime"][command]
        assert imports["heavy_imported"] == []
        assert 0 < len(imports["top_modules"]) <= 3 and 0 < len(imports["top_packages"]) <= 3
    assert sorted(result["no_program_imports"]) == ["agents tools list", "cache stats", "production status"]
    for command, heavy in result["no_program_imports"].items():
        assert "dspy" not in heavy and "litellm" not in heavy, command


def test_submodules_are_attributes_as_in_an_eager_package() -> None:
    import dspyo3_core
    import dspyo3_production

    assert dspyo3_core.lm.HookedLM is dspyo3_core.HookedLM
    assert dspyo3_production.logs.Redactor is dspyo3_production.Redactor
