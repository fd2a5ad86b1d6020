"""How long the ``dspyo3`` CLI takes to start: ``dspyo3 --help``, ``dspyo3 plugins`` and ``dspyo3 lm list``.

Each command runs ``--runs`` times in a fresh process (the installed ``dspyo3`` console script next to this
Python, every plugin installed loads as it does for a user), interleaved with the anchor, ``python -c "import
dspy"`` (what the CLI cost when it imported DSPy eagerly), and ``python -c pass`` (the interpreter's own start-up).
The figure is the median wall time of the runs; the target is 150 ms per command. The commands run in an empty
temporary directory with an empty user config directory, so no ``dspyo3.toml`` is read, and with bytecode
caching on (``PYTHONDONTWRITEBYTECODE`` unset) as in a user's install.

Then each command runs once more under ``python -X importtime``: the JSON lists the modules that took the most
import time of their own (``top_modules``; ``top_packages`` sums them per top-level package) and whether
``dspy``, ``litellm`` or ``pydantic`` was imported at all.

    python benchmarks/startup.py [--runs 15] [--top 8] [--json F]

Commands that run no DSPy program (``cache stats`` against a Redis URL nobody listens on, ``production status``,
``agents tools list``) run once each under ``-X importtime`` too: ``no_program_imports`` lists which of ``dspy``,
``litellm`` and ``pydantic`` each imported (DSPy and LiteLLM should be absent; the tool registry uses Pydantic).

Last line: ``{"runs": N, "target_ms": 150, "median_ms": {...}, "min_ms": {...}, "anchor_median_ms": {...},
"under_target": {...}, "importtime": {command: {"total_ms", "heavy_imported", "top_packages": [[package, ms], ...],
"top_modules": [[module, ms], ...]}}, "no_program_imports": {command: [module, ...]}}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, log, output_args

TARGET_MS = 150.0
COMMANDS = {"--help": ["--help"], "plugins": ["plugins"], "lm list": ["lm", "list"]}
# commands that talk to Redis, read the config or list tools: no DSPy program runs, so no DSPy should be imported
NO_PROGRAM = {"cache stats": ["cache", "stats", "--redis-url", "redis://127.0.0.1:9/0"],
              "production status": ["production", "status"], "agents tools list": ["agents", "tools", "list"]}
HEAVY = ("dspy", "litellm", "pydantic")

# what the console script does, with the process's exit status kept out of the way of -X importtime's output
RUN_MAIN = """import sys
from dspyo3_core.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
"""


def console_script() -> list[str]:
    """The ``dspyo3`` console script installed next to this interpreter, else ``python -c`` running its entry point."""
    script = Path(sys.executable).parent / ("dspyo3.exe" if os.name == "nt" else "dspyo3")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", RUN_MAIN]


def wall_ms(argv: list[str], env: dict[str, str], cwd: str) -> float:
    """Wall time of one run of ``argv`` in a fresh process (exit status must be 0)."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


def importtime(args: list[str], env: dict[str, str], cwd: str, top: int) -> dict[str, Any]:
    """Run the CLI with ``args`` under ``-X importtime``: total import time, heavy modules imported, top imports."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", RUN_MAIN, *args], env=env, cwd=cwd,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    total_us, modules, own, packages = 0, set(), [], {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cumulative, name = line[len("import time:"):].split("|")
        modules.add(name.strip())
        own.append((name.strip(), int(self_us) / 1000))
        package = name.strip().split(".")[0]
        packages[package] = packages.get(package, 0.0) + int(self_us) / 1000
        if not name.startswith("  "):  # imported by the command itself, not by another module
            total_us += int(cumulative)
    own.sort(key=lambda item: -item[1])
    heavy = sorted(module for module in modules if module in HEAVY)
    return {"total_ms": round(total_us / 1000, 1), "heavy_imported": heavy,
            "top_packages": [[name, round(ms, 1)] for name, ms in sorted(packages.items(), key=lambda i: -i[1])[:top]],
            "top_modules": [[name, round(ms, 1)] for name, ms in own[:top]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="fresh processes per command (median kept)")
    parser.add_argument("--top", type=int, default=8, help="how many top imports to list per command")
    output_args(parser)
    args = parser.parse_args()
    script = console_script()
    anchors = {"import dspy": [sys.executable, "-c", "import dspy"], "python -c pass": [sys.executable, "-c", "pass"]}
    with tempfile.TemporaryDirectory() as cwd, tempfile.TemporaryDirectory() as config_dir:
        env = {**os.environ, "DSPYO3_CONFIG_DIR": config_dir}
        env.pop("DSPYO3_DEBUG", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's install has its bytecode cached (the warm-up writes it)
        times: dict[str, list[float]] = {name: [] for name in [*COMMANDS, *anchors]}
        for argv in [*([*script, *a] for a in COMMANDS.values()), *anchors.values()]:
            wall_ms(argv, env, cwd)  # warm the file cache once; not counted
        for run in range(args.runs):
            for name, cli_args in COMMANDS.items():
                times[name].append(wall_ms([*script, *cli_args], env, cwd))
            for name, argv in anchors.items():
                times[name].append(wall_ms(argv, env, cwd))
            log(f"run {run + 1}/{args.runs}: " + ", ".join(f"{n} {t[-1]:.0f} ms" for n, t in times.items()))
        imports = {name: importtime(cli_args, env, cwd, args.top) for name, cli_args in COMMANDS.items()}
        no_program = {name: importtime(cli_args, env, cwd, 1)["heavy_imported"]
                      for name, cli_args in NO_PROGRAM.items()}
    median = {name: round(statistics.median(times[name]), 1) for name in COMMANDS}
    result = {
        "runs": args.runs,
        "command": " ".join(script) if len(script) == 1 else "python -c <dspyo3 main>",
        "target_ms": TARGET_MS,
        "median_ms": median,
        "min_ms": {name: round(min(times[name]), 1) for name in COMMANDS},
        "anchor_median_ms": {name: round(statistics.median(times[name]), 1) for name in anchors},
        "under_target": {name: value < TARGET_MS for name, value in median.items()},
        "importtime": imports,
        "no_program_imports": no_program,
        "loadavg": [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    emit(result, args.json_path, args.plot_path,
         bars=[*((f"dspyo3 {n}", median[n]) for n in COMMANDS), *((n, result["anchor_median_ms"][n]) for n in anchors)],
         title="CLI start-up, median wall time (ms)")


if __name__ == "__main__":
    main()
