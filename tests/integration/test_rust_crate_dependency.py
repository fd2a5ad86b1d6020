"""The Rust crate as a dependency: the README's ``Cargo.toml`` and ``build.rs``, copied into a crate outside the
Cargo workspace, build and run a ``Predict`` against the loopback LM, with the crate as a path dependency and as a
git dependency (a git repository made from a copy of ``crates/``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CRATES = REPO / "crates"
README = CRATES / "dspyo3" / "README.md"

MAIN_RS = r'''
use std::time::Duration;

use dspyo3::testing::LoopbackLm;
use dspyo3::{DspyType, Predict, Signature};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// A product review.
#[derive(Debug, Clone, Serialize, Deserialize, DspyType)]
struct Review {
    text: String,
    stars: u8,
}

/// Summarize a review.
#[derive(Signature)]
struct Summarize {
    #[input]
    review: Review,
    #[output]
    summary: String,
}

#[tokio::main]
async fn main() -> dspyo3::Result<()> {
    let server = LoopbackLm::start(Duration::from_millis(1))?;
    dspyo3::configure(&server.lm().build()?)?;
    let input = SummarizeInput { review: Review { text: "Great value.".into(), stars: 5 } };
    let predict = Predict::<Summarize>::new()?;
    let sync = predict.call(&input)?;
    let task = predict.clone();
    let input2 = input.clone();
    let spawned = tokio::spawn(async move { task.acall(&input2).await }).await.expect("task")?;
    let mut stream = predict.stream(&input)?;
    let mut streamed = None;
    while let Some(event) = stream.next().await {
        if let dspyo3::StreamEvent::Prediction(p) = event? {
            streamed = Some(p.output.summary);
        }
    }
    let json = serde_json::to_string(&sync).expect("serializable");
    println!("summary={} acall={} stream={} json={json}", sync.summary, spawned.summary,
             streamed.unwrap_or_default());
    Ok(())
}
'''


def readme_block(lang: str) -> str:
    """The README block fenced as ``lang``, below the heading about depending on the crate."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Depending on the crate", 1)[1]
    match = re.search(rf"```{re.escape(lang)}\n(.*?)```", section, re.S)
    assert match, f"no ```{lang} block under 'Depending on the crate' in {README}"
    return match.group(1)


def hatch_venv() -> Path:
    venv = os.environ.get("VIRTUAL_ENV") or sys.prefix
    return Path(venv)


def build_and_run(tmp_path: Path, manifest: str, name: str, offline: bool) -> None:
    """Build the crate ``name`` from ``manifest`` + the README's ``build.rs`` + ``MAIN_RS`` outside the workspace,
    run it, and check what it printed."""
    app = tmp_path / name
    (app / "src").mkdir(parents=True)
    assert "[build-dependencies]" not in manifest
    manifest, n = re.subn(r'^name = "my-app"$', f'name = "{name}"', manifest, flags=re.M)
    assert n == 1, manifest
    (app / "Cargo.toml").write_text(manifest, encoding="utf-8")
    (app / "build.rs").write_text(readme_block("rust,no_run").split("```")[0], encoding="utf-8")
    (app / "src" / "main.rs").write_text(MAIN_RS, encoding="utf-8")
    # the workspace's versions of every crate (the registry cache holds them), so the build needs no registry and
    # reuses the workspace's compiled dependencies in crates/target
    shutil.copy(CRATES / "Cargo.lock", app / "Cargo.lock")

    venv = hatch_venv()
    env = {k: v for k, v in os.environ.items() if k not in {"LD_LIBRARY_PATH", "CARGO_MANIFEST_DIR"}}
    env.update(VIRTUAL_ENV=str(venv), PYO3_PYTHON=str(venv / "bin" / "python"),
               CARGO_TARGET_DIR=str(CRATES / "target"), LITELLM_LOCAL_MODEL_COST_MAP="true")
    # `--offline` forbids fetching a git dependency, even from a local repository
    command = ["cargo", "build", *(["--offline"] if offline else []), "--quiet", "--bin", name]
    build = subprocess.run(command, cwd=app, env=env, capture_output=True, text=True, timeout=1500)
    assert build.returncode == 0, build.stderr[-4000:]

    # no LD_LIBRARY_PATH: the README's build.rs gave the binary its rpath to libpython
    binary = CRATES / "target" / "debug" / name
    if sys.platform == "linux" and shutil.which("readelf"):
        dynamic = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True, check=True).stdout
        assert re.search(r"\((?:RUN)?PATH\)\s+Library r(?:un)?path: \[.+\]", dynamic), dynamic
    run = subprocess.run([str(binary)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    line = run.stdout.strip().splitlines()[-1]
    found = re.fullmatch(r"summary=(\S+) acall=(\S+) stream=(\S+) json=(.*)", line)
    assert found, run.stdout
    summary, acall, streamed, json = found.groups()
    assert summary.startswith("summary-")  # the loopback LM's answer, derived from the prompt
    assert acall == summary and streamed == summary
    assert json == f'{{"summary":"{summary}"}}'


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cargo") is None, reason="needs cargo (rustup) on PATH")
def test_readme_manifest_builds_and_runs_outside_the_workspace(tmp_path: Path) -> None:
    # the README's path dependency, pointed at this checkout
    manifest, n = re.subn(r'^dspyo3 = \{ path = "[^"]*"((?:, [^}]*)?) \}$',
                          lambda m: f'dspyo3 = {{ path = "{CRATES / "dspyo3"}"{m.group(1)} }}', readme_block("toml"),
                          flags=re.M)
    assert n == 1, manifest
    build_and_run(tmp_path, manifest, "my-app", offline=True)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cargo") is None or shutil.which("git") is None, reason="needs cargo and git")
def test_readme_manifest_builds_with_the_crate_as_a_git_dependency(tmp_path: Path) -> None:
    # a git repository holding this checkout's crates/ folder (working tree, not only what is committed), where
    # cargo looks the package up by name as it does in a clone of the project's repository
    repo = tmp_path / "dspyo3-repo"
    shutil.copytree(CRATES, repo / "crates", ignore=shutil.ignore_patterns("target", "__pycache__"))
    git = ["git", "-c", "user.name=dspyo3 test", "-c", "user.email=test@localhost", "-c", "commit.gpgsign=false"]
    for args in (["init", "--quiet"], ["add", "--all"], ["commit", "--quiet", "--message", "crates"]):
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True)

    manifest = readme_block("toml")
    # the README's git line, pointed at that repository, replaces its path line
    git_line = re.search(r'^# or: (dspyo3 = \{ git = "[^"]*"(?:, [^}]*)? \})$', manifest, flags=re.M)
    assert git_line, f"no '# or: dspyo3 = {{ git = ... }}' line in the README's Cargo.toml:\n{manifest}"
    dependency = re.sub(r'git = "[^"]*"', f'git = "{repo.as_uri()}"', git_line.group(1))
    manifest, n = re.subn(r'^dspyo3 = \{ path = "[^"]*"(?:, [^}]*)? \}$', lambda _: dependency, manifest, flags=re.M)
    assert n == 1, manifest
    build_and_run(tmp_path, manifest, "my-app-git", offline=False)
