"""The optimizer runner: TOML configuration and its errors, kill-and-resume from a checkpoint, time and cost
budgets, the report and plot, optimizers registered through the plugin hook."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import dspy
import pytest

from dspyo3_core import OptimizerSpec, hookimpl
from dspyo3_core.config import ConfigError
from dspyo3_core.plugins import get_plugin_manager
from dspyo3_core.testing.server import LMServer, Reply
from dspyo3_optimize import RunConfig, TrialSpec, run
from dspyo3_optimize.optimizers import get_optimizer, optimizer_registry
from dspyo3_optimize.runner import Run, RunError
from dspyo3_optimize.testing import GSM8KResponder

from .conftest import GSM8K_TRAIN

CONFIG = """
[run]
name = "resume-test"
program = "dspyo3_optimize.examples:gsm8k_program"
metric = "gsm8k"
out_dir = "run"
concurrency = 1

[data]
path = "{train}"
preset = "gsm8k"
limit = 16
dev_size = 4

[[trials]]
name = "one-demo"
optimizer = "bootstrap_fewshot"
options = {{ max_bootstrapped_demos = 1, max_labeled_demos = 0 }}

[[trials]]
name = "two-demos"
optimizer = "bootstrap_fewshot"
options = {{ max_bootstrapped_demos = 2, max_labeled_demos = 0 }}

[[trials]]
name = "labeled"
optimizer = "bootstrap_fewshot"
options = {{ max_bootstrapped_demos = 0, max_labeled_demos = 2 }}
"""


def _write_config(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "optimize.toml"
    path.write_text(text.format(train=GSM8K_TRAIN))
    return path


def test_killed_run_resumes_without_repeating_finished_trials(tmp_path: Path, lm_env: dict[str, str],
                                                             dspyo3_exe: str, gsm8k_server: LMServer,
                                                             responder: GSM8KResponder) -> None:
    gsm8k_server.responder = lambda request: Reply(content=responder(request), latency=0.1)
    config = _write_config(tmp_path)
    rundir = Run(tmp_path / "run")
    first = subprocess.Popen([dspyo3_exe, "optimize", "run", str(config), "--no-progress"], env=lm_env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 90
    finished: list[int] = []
    while time.monotonic() < deadline and first.poll() is None:
        finished = [e["trial"] for e in rundir.events() if e["event"] == "trial_finished"]
        if len(finished) >= 2:
            break
        time.sleep(0.02)
    assert first.poll() is None, f"the run ended before it could be killed: {first.communicate()[1][-2000:]!r}"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed_checkpoint = json.loads(rundir.checkpoint_path.read_text())
    done_before = sorted(int(k) for k, v in killed_checkpoint["trials"].items() if v["status"] == "finished")
    assert done_before[:2] == [0, 1] and len(done_before) < 4
    requests_first = len(gsm8k_server.requests)

    second = subprocess.run([dspyo3_exe, "optimize", "run", str(config), "--json", "--no-progress"], env=lm_env,
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    report = json.loads(second.stdout)
    assert report["status"] == "finished" and report["resumed_trials"] == done_before
    assert [t["status"] for t in report["trials"]] == ["finished"] * 4
    events = rundir.events()
    started = [e["trial"] for e in events if e["event"] == "trial_started"]
    for index in done_before:
        assert started.count(index) == 1, f"finished trial {index} was started again: {started}"
        assert report["trials"][index]["finished_at"] == killed_checkpoint["trials"][str(index)]["finished_at"]
    assert sorted(e["trial"] for e in events if e["event"] == "trial_finished") == [0, 1, 2, 3]
    assert report["sessions"] == 2 and Path(report["plot_path"]).is_file()
    # the second session asked the LM only for the unfinished trials: at most the dev set (4) plus the
    # bootstrapping (<= 12 train examples) for each of them
    requests_second = len(gsm8k_server.requests) - requests_first
    assert 0 < requests_second <= (4 - len(done_before)) * 16


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"optimize\.toml: unknown key 'max_trials' in \[run\]; known keys: "
                                         r"baseline, concurrency"):
        RunConfig.from_toml(_write_config(tmp_path, CONFIG.replace('metric = "gsm8k"',
                                                                    'metric = "gsm8k"\nmax_trials = 3')))
    with pytest.raises(ConfigError, match=r"\[\[trials\]\] #2 needs optimizer"):
        RunConfig.from_toml(_write_config(tmp_path, CONFIG.replace('optimizer = "bootstrap_fewshot"\noptions = {{ '
                                                                    'max_bootstrapped_demos = 2', 'options = {{ '
                                                                    'max_bootstrapped_demos = 2')))
    with pytest.raises(ConfigError, match=r"unknown key 'split' in \[data\]; known keys: dev, dev_fraction"):
        RunConfig.from_toml(_write_config(tmp_path, CONFIG.replace("dev_size = 4", "split = 4")))
    with pytest.raises(ConfigError, match=r"\[run\] max_seconds must be a number >= 0, got 'soon'"):
        RunConfig.from_toml(_write_config(tmp_path, CONFIG.replace("concurrency = 1", 'max_seconds = "soon"')))
    with pytest.raises(ConfigError, match="executor = 'dask'; use \"local\" or \"ray\""):
        RunConfig.from_toml(_write_config(tmp_path, CONFIG.replace("concurrency = 1", 'executor = "dask"')))
    with pytest.raises(ConfigError, match="stage = 'production'; use one of dev, staging, prod"):
        RunConfig.from_toml(_write_config(tmp_path, CONFIG + '[register]\nname = "x"\nstage = "production"\n'))
    with pytest.raises(ConfigError, match=r"\[data\] limit must be an integer, got 'ten'"):
        RunConfig.from_toml(_write_config(tmp_path, CONFIG.replace("limit = 16", 'limit = "ten"')))
    with pytest.raises(ConfigError, match="is not valid TOML"):
        RunConfig.from_toml(_write_config(tmp_path, "[run\n"))
    config = RunConfig.from_toml(_write_config(tmp_path, CONFIG.replace('"bootstrap_fewshot"', '"bootstrap"', 1)))
    with pytest.raises(KeyError, match="unknown optimizer 'bootstrap'; known: bootstrap_fewshot, "
                                       "bootstrap_random_search, copro, gepa, mipro_v2, simba"):
        run(config)


def test_optimizers_come_from_the_plugin_hook() -> None:
    registry = optimizer_registry()
    assert registry.names() == ["bootstrap_fewshot", "bootstrap_random_search", "copro", "gepa", "mipro_v2",
                                "simba"]
    assert registry.distribution_of("mipro_v2") == "dspyo3-optimize"
    assert get_optimizer("MIPROv2").name == "mipro_v2"

    class Plugin:
        @hookimpl
        def dspyo3_register_optimizers(self, register: Any) -> None:
            register(OptimizerSpec("labeled_only", lambda metric, **o: dspy.LabeledFewShot(**o), "labels as demos"))

    manager = get_plugin_manager()
    manager.register(Plugin(), name="my-optimizers")
    assert get_optimizer("labeled_only").description == "labels as demos"


def test_third_party_optimizer_time_budget_and_report(tmp_path: Path, gsm8k_train: list[Any], gsm8k_lm: Any,
                                                      gsm8k_server: LMServer) -> None:
    class Plugin:
        @hookimpl
        def dspyo3_register_optimizers(self, register: Any) -> None:
            register(OptimizerSpec("labeled_only", lambda metric, **o: dspy.LabeledFewShot(**o)))

    get_plugin_manager().register(Plugin(), name="my-optimizers")
    config = RunConfig(name="labeled", program=dspy.ChainOfThought("question -> answer"), metric="gsm8k",
                       trials=[TrialSpec("labeled_only", {"k": 2}), TrialSpec("labeled_only", {"k": 1})],
                       out_dir=tmp_path / "run", trainset=gsm8k_train[:6], devset=gsm8k_train[6:12], lm=gsm8k_lm)
    report = run(config, progress=True)  # rich progress on stderr
    assert [t["status"] for t in report.trials] == ["finished"] * 3 and report.best_trial == 1
    assert report.trials[1]["score"] > report.trials[0]["score"]  # two demos beat none with this responder
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["trials"][1]["options"] == {"k": 2} and saved["dataset"]["dev"]["n"] == 6

    timed = RunConfig(name="timed", program="dspyo3_optimize.examples:gsm8k_program", metric="gsm8k",
                      trials=[TrialSpec("bootstrap_fewshot")], out_dir=tmp_path / "timed", trainset=gsm8k_train[:4],
                      devset=gsm8k_train[4:6], lm=gsm8k_lm, max_seconds=0)
    timed_report = run(timed)
    assert timed_report.status == "time_budget_exceeded" and timed_report.trials == []
    with pytest.raises(RunError, match="different run config"):
        run(RunConfig(name="timed", program="dspyo3_optimize.examples:qa_program", metric="gsm8k",
                      trials=[TrialSpec("bootstrap_fewshot")], out_dir=tmp_path / "timed",
                      trainset=gsm8k_train[:4], devset=gsm8k_train[4:6], lm=gsm8k_lm))


def _priced_lm(server: LMServer) -> Any:
    """An LM built by dspyo3 (so dspyo3-production can refuse calls) priced at $100 per million tokens."""
    from dspyo3_core.lm import HookedLM
    from dspyo3_core.native_lm import PRICING

    PRICING.set("openai/gsm8k-priced", input_per_mtok=100.0, output_per_mtok=100.0)
    return HookedLM("openai/gsm8k-priced", api_base=server.api_base, api_key="test", cache=False, num_retries=0,
                    max_tokens=200)


def test_cost_budget_through_dspyo3_production(tmp_path: Path, gsm8k_train: list[Any],
                                               gsm8k_server: LMServer) -> None:
    prod = pytest.importorskip("dspyo3_production")
    lm = _priced_lm(gsm8k_server)
    config = RunConfig(name="costly", program="dspyo3_optimize.examples:gsm8k_program", metric="gsm8k",
                       trials=[TrialSpec("bootstrap_fewshot", {"max_bootstrapped_demos": 2})] * 3,
                       out_dir=tmp_path / "run", trainset=gsm8k_train[:8], devset=gsm8k_train[8:14], lm=lm,
                       max_cost_usd=0.3)
    try:
        report = run(config)
    finally:
        prod.disable(close=True)
    assert report.status == "cost_budget_exceeded"
    assert report.cost_usd is not None and 0 < report.cost_usd <= 0.3
    assert any(t["status"] == "interrupted" and "budget" in t["error"] for t in report.trials)
    assert prod.stack.active() is None  # the run took off the stack it put on


def test_every_builtin_optimizer_runs_end_to_end(tmp_path: Path, gsm8k_train: list[Any], gsm8k_lm: Any) -> None:
    """Random search, COPRO, SIMBA and GEPA through the same runner (tiny budgets; the GSM8K responder)."""
    trials = [
        TrialSpec("bootstrap_random_search", {"max_bootstrapped_demos": 2, "max_labeled_demos": 0,
                                              "num_candidate_programs": 2, "num_threads": 2}),
        TrialSpec("COPRO", {"breadth": 2, "depth": 1}, compile={"eval_kwargs": {"num_threads": 2}}),
        TrialSpec("simba", {"bsize": 4, "num_candidates": 2, "max_steps": 1, "num_threads": 2}),
        TrialSpec("gepa", {"max_metric_calls": 30, "num_threads": 2, "reflection_minibatch_size": 2}),
    ]
    report = run(RunConfig(name="all", program="dspyo3_optimize.examples:gsm8k_program", metric="gsm8k",
                           trials=trials, out_dir=tmp_path / "run", trainset=gsm8k_train[:10],
                           devset=gsm8k_train[10:16], lm=gsm8k_lm))
    assert [(t["name"], t["status"]) for t in report.trials] == [
        ("baseline", "finished"), ("bootstrap_random_search", "finished"), ("COPRO", "finished"),
        ("simba", "finished"), ("gepa", "finished")]
    for trial in report.trials[1:]:
        assert trial["candidate_scores"], trial["name"]  # each optimizer's own candidates, on the 0-1 scale
        assert all(0 <= s <= 1 for s in trial["candidate_scores"]), trial
    assert report.trials[1]["score"] > report.trials[0]["score"]  # random search finds the demos
    bad = run(RunConfig(name="bad", program="dspyo3_optimize.examples:gsm8k_program", metric="gsm8k",
                        trials=[TrialSpec("copro", {"breadth": 2, "depth": 1}, compile={"valset": []})],
                        out_dir=tmp_path / "bad", trainset=gsm8k_train[:4], devset=gsm8k_train[4:6], lm=gsm8k_lm,
                        baseline=False))
    assert bad.trials[0]["status"] == "failed" and bad.best_trial is None
    assert "COPRO.compile takes no option 'valset'; it takes: trainset, eval_kwargs" in bad.trials[0]["error"]


# -- review fixes: config types, CLI errors, imports next to the config, fingerprint, crash windows, budgets ----


def _tiny(tmp_path: Path, train: list[Any], lm: Any, **overrides: Any) -> RunConfig:
    """One cheap trial (labeled demos only: no LM calls while compiling) on 2 dev examples."""
    options: dict[str, Any] = {"max_bootstrapped_demos": 0, "max_labeled_demos": 1}
    kw: dict[str, Any] = {"name": "tiny", "program": "dspyo3_optimize.examples:gsm8k_program", "metric": "gsm8k",
                          "trials": [TrialSpec("bootstrap_fewshot", options)], "out_dir": tmp_path / "run",
                          "trainset": train[:2], "devset": train[2:4], "lm": lm, "baseline": False,
                          "concurrency": 2}
    kw.update(overrides)
    return RunConfig(**kw)


@pytest.mark.parametrize(("old", "new", "message"), [
    ("options = {{ max_bootstrapped_demos = 1, max_labeled_demos = 0 }}", 'options = "oops"',
     r"\[\[trials\]\] #1 options must be a table, e.g. \{ key = 1 \}, got 'oops'"),
    ('name = "two-demos"', 'name = "two-demos"\ncompile = 3', r"\[\[trials\]\] #2 compile must be a table"),
    ('name = "labeled"', 'name = "labeled"\nseed = "1"', r"\[\[trials\]\] #3 seed must be an integer, got '1'"),
    ('name = "labeled"', 'name = 7', r"\[\[trials\]\] #3 name must be a string, got 7"),
    ("concurrency = 1", 'baseline = "no"', r"\[run\] baseline must be true or false, got 'no'"),
    ("concurrency = 1", "lm = 3", r"\[run\] lm must be a string, got 3"),
])
def test_config_value_types_are_checked(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in CONFIG
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_toml(_write_config(tmp_path, CONFIG.replace(old, new)))


def test_register_registry_path_is_relative_to_the_config(tmp_path: Path) -> None:
    config = RunConfig.from_toml(_write_config(tmp_path, CONFIG + '[register]\nname = "x"\nregistry = "reg"\n'))
    assert config.register is not None and config.register.registry == str(tmp_path.resolve() / "reg")
    url = RunConfig.from_toml(_write_config(tmp_path, CONFIG + '[register]\nname = "x"\nregistry = "redis://h/0"\n'))
    assert url.register is not None and url.register.registry == "redis://h/0"
    with pytest.raises(ConfigError, match=r"\[register\] registry must be a string, got 5"):
        RunConfig.from_toml(_write_config(tmp_path, CONFIG + '[register]\nname = "x"\nregistry = 5\n'))


def test_cli_prints_clean_errors_with_exit_status_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from dspyo3_core.cli import build_cli
    from dspyo3_optimize import runner as runner_module
    from dspyo3_optimize.evaluate import ExecutorUnavailable
    from dspyo3_optimize.registry import RegistryError

    cli = build_cli()
    bad = _write_config(tmp_path, CONFIG.replace("options = {{ max_bootstrapped_demos = 1, max_labeled_demos = 0 }}",
                                                 'options = "oops"'))
    result = CliRunner().invoke(cli, ["optimize", "run", str(bad)])
    assert result.exit_code == 1 and "options must be a table" in result.output, result.output
    good = _write_config(tmp_path)
    for error in (RegistryError("timed out after 30s waiting for the lock /r/x/.lock"),
                  ExecutorUnavailable("executor = \"ray\" needs Ray: pip install 'dspyo3-optimize[ray]'")):
        def fail(*args: Any, error: Exception = error, **kwargs: Any) -> Any:
            raise error

        monkeypatch.setattr(runner_module, "run", fail)
        result = CliRunner().invoke(cli, ["optimize", "run", str(good), "--no-progress"])
        assert result.exit_code == 1 and str(error) in result.output and "Traceback" not in result.output
        assert not isinstance(result.exception, type(error)), result.exception


def test_metric_and_program_modules_next_to_the_config(tmp_path: Path, gsm8k_lm: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(sys, "path", list(sys.path))
    for module in ("mymetric_next_to_toml", "myprogram_next_to_toml"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "mymetric_next_to_toml.py").write_text(
        "from dspyo3_optimize.metrics import numeric_match\n"
        "def acc(example, prediction, trace=None):\n    return numeric_match(example, prediction, trace)\n")
    (conf_dir / "myprogram_next_to_toml.py").write_text(
        "import dspy\ndef build():\n    return dspy.ChainOfThought('question -> answer')\n")
    text = (CONFIG.split("[[trials]]")[0].replace('metric = "gsm8k"', 'metric = "mymetric_next_to_toml:acc"')
            .replace("dspyo3_optimize.examples:gsm8k_program", "myprogram_next_to_toml:build")
            .replace("limit = 16", "limit = 4").replace("dev_size = 4", "dev_size = 2")
            + "[[trials]]\noptimizer = \"bootstrap_fewshot\"\n"
              "options = {{ max_bootstrapped_demos = 0, max_labeled_demos = 1 }}\n")
    config = RunConfig.from_toml(_write_config(conf_dir, text))
    config.lm = gsm8k_lm
    report = run(config)
    assert [t["status"] for t in report.trials] == ["finished", "finished"], report.trials
    assert report.metric == "mymetric_next_to_toml:acc"
    from dspyo3_optimize.metrics import resolve_metric

    with pytest.raises(ValueError, match=r"cannot import 'missing_mod_xyz'.*put missing_mod_xyz\.py in the current "
                                         r"directory or in .*conf"):
        resolve_metric("missing_mod_xyz:acc", [conf_dir])


def test_fingerprint_is_stable_across_processes_and_names_a_changed_lm(tmp_path: Path, gsm8k_train: list[Any],
                                                                       gsm8k_server: LMServer) -> None:
    def lm(model: str = "openai/gsm8k-sim") -> Any:  # a new object each time, as in a new process
        return dspy.LM(model, api_base=gsm8k_server.api_base, api_key="test", cache=False, num_retries=0)

    def config(the_lm: Any, **overrides: Any) -> RunConfig:
        options = {"max_bootstrapped_demos": 0, "max_labeled_demos": 1, "teacher_settings": {"lm": lm()}}
        return _tiny(tmp_path, gsm8k_train, the_lm, trials=[TrialSpec("bootstrap_fewshot", options)], **overrides)

    first = run(config(lm()))
    assert first.status == "finished" and first.resumed_trials == []
    again = run(config(lm()))  # same config, fresh LM objects (in options too): resumes
    assert again.resumed_trials == [0] and again.run_id == first.run_id
    with pytest.raises(RunError, match=r"lm: 'openai/gsm8k-sim' -> 'openai/other-model'"):
        run(config(lm("openai/other-model")))
    with pytest.raises(RunError, match=r"program: 'dspyo3_optimize.examples:gsm8k_program' -> "):
        run(config(lm(), program="dspyo3_optimize.examples:qa_program"))
    changed = dspy.ChainOfThought(dspy.Signature("question -> answer", "Think harder."))
    with pytest.raises(RunError, match="program_state changed"):
        run(config(lm(), program=changed))


def test_crash_between_register_and_checkpoint_does_not_register_twice(
        tmp_path: Path, gsm8k_train: list[Any], gsm8k_lm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from dspyo3_optimize import ProgramRegistry, RegisterSpec
    from dspyo3_optimize import runner as runner_module

    config = _tiny(tmp_path, gsm8k_train, gsm8k_lm, register=RegisterSpec("tiny", registry=str(tmp_path / "reg")))
    real_register = runner_module._register

    def register_then_die(*args: Any, **kwargs: Any) -> Any:
        real_register(*args, **kwargs)
        raise SystemExit("killed before the checkpoint recorded the registration")

    monkeypatch.setattr(runner_module, "_register", register_then_die)
    with pytest.raises(SystemExit):
        run(config)
    registry = ProgramRegistry(tmp_path / "reg")
    assert registry.versions("tiny") == ["1.0.0"]
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["registered"] is None
    monkeypatch.undo()
    report = run(config)
    assert report.registered is not None and report.registered["version"] == "1.0.0"
    assert registry.versions("tiny") == ["1.0.0"] and registry.meta("tiny").run_id == report.run_id


def test_ctrl_c_mid_trial_marks_it_interrupted_and_resume_reruns_it(
        tmp_path: Path, gsm8k_train: list[Any], gsm8k_lm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from dspyo3_optimize import runner as runner_module

    config = _tiny(tmp_path, gsm8k_train, gsm8k_lm)

    def ctrl_c(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_module, "_run_trial", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run(config)
    checkpoint = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert checkpoint["status"] == "interrupted"
    assert checkpoint["trials"]["0"]["status"] == "interrupted" and "KeyboardInterrupt" in checkpoint["trials"]["0"][
        "error"]
    monkeypatch.undo()
    report = run(config)
    assert report.status == "finished" and report.resumed_trials == []
    assert report.trials[0]["status"] == "finished" and report.trials[0]["attempts"] == 2


def test_cost_budget_counts_what_earlier_sessions_spent(tmp_path: Path, gsm8k_train: list[Any],
                                                        gsm8k_server: LMServer) -> None:
    prod = pytest.importorskip("dspyo3_production")
    lm = _priced_lm(gsm8k_server)
    limit = 5.0
    config = _tiny(tmp_path, gsm8k_train, lm, max_cost_usd=limit)
    try:
        first = run(config)
        assert first.status == "finished" and first.cost_usd and first.cost_usd > 0.01
        one_trial = first.cost_usd
        path = tmp_path / "run" / "checkpoint.json"

        def pretend(prior: float) -> None:  # earlier sessions spent `prior`; the trial must run again
            checkpoint = json.loads(path.read_text())
            checkpoint["cost_usd"] = prior
            checkpoint["trials"]["0"]["status"] = "interrupted"
            path.write_text(json.dumps(checkpoint))

        pretend(limit - one_trial / 4)  # room for less than the trial costs
        second = run(config)
        assert second.status == "cost_budget_exceeded"
        assert second.cost_usd is not None and second.cost_usd <= limit + 1e-9, second.cost_usd
        pretend(limit)  # nothing left: no LM call at all
        before = len(gsm8k_server.requests)
        third = run(config)
        assert third.status == "cost_budget_exceeded" and len(gsm8k_server.requests) == before
    finally:
        prod.disable(close=True)


def test_another_budgets_refusal_does_not_end_the_run(tmp_path: Path, gsm8k_train: list[Any],
                                                      gsm8k_server: LMServer) -> None:
    prod = pytest.importorskip("dspyo3_production")
    from dspyo3_core.lm import LMCall

    lm = _priced_lm(gsm8k_server)
    stingy = prod.Budget(0.0, per="user", name="someone-else")  # refuses every call charged to a user
    stack = prod.enable(prod.Production(metrics=False, log_events=False, module_callbacks=False, budgets=[stingy]))
    assert stack.costs is not None
    before = list(stack.costs.budgets)
    refused: list[str] = []

    def somebody_elses_call(record: dict[str, Any]) -> None:  # between trials, on the shared tracker
        with prod.attribute(user="eve"), pytest.raises(prod.BudgetExceededError):
            stack.costs.reserve(LMCall(lm=lm, messages=[{"role": "user", "content": "hi"}]))
        refused.append(record["name"])

    config = _tiny(tmp_path, gsm8k_train, lm, max_cost_usd=50.0, baseline=True)
    try:
        report = run(config, on_trial=somebody_elses_call)
    finally:
        prod.disable(close=True)
    assert stingy.refusals == len(refused) == 2
    assert report.status == "finished", report.trials  # the run's own budget refused nothing
    assert [t["status"] for t in report.trials] == ["finished", "finished"]
    assert stack.costs.budgets == before and all(a is b for a, b in zip(stack.costs.budgets, before, strict=True))
    assert "reserve" not in vars(stack.costs)  # nothing patched onto the shared tracker


def test_cli_hides_tracebacks_only_for_this_packages_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from dspyo3_core.cli import build_cli
    from dspyo3_optimize import runner as runner_module
    from dspyo3_optimize.data import DataError

    cli = build_cli()
    good = _write_config(tmp_path)
    for error in (KeyError("answer"), ValueError("could not convert string to float: 'n/a'")):
        def buggy(*args: Any, error: Exception = error, **kwargs: Any) -> Any:
            raise error  # as a metric or a program factory with a bug would

        monkeypatch.setattr(runner_module, "run", buggy)
        result = CliRunner().invoke(cli, ["optimize", "run", str(good), "--no-progress"])
        assert result.exit_code == 1 and result.exception is error, result.output  # the traceback is kept
    monkeypatch.undo()
    (tmp_path / "bad").mkdir()
    bad = _write_config(tmp_path / "bad", CONFIG.replace('metric = "gsm8k"', 'metric = "gsm8k"\nmax_second = 3'))
    result = CliRunner().invoke(cli, ["optimize", "run", str(bad)])
    assert result.exit_code == 1, result.output
    assert "unknown key 'max_second' (did you mean 'max_seconds'?) in [run]" in result.output
    assert "Traceback" not in result.output

    def bad_data(*args: Any, **kwargs: Any) -> Any:
        raise DataError("train.jsonl:3 is not JSON")

    monkeypatch.setattr(runner_module, "run", bad_data)
    result = CliRunner().invoke(cli, ["optimize", "run", str(good), "--no-progress"])
    assert result.exit_code == 1 and "train.jsonl:3 is not JSON" in result.output


def test_importing_the_plugin_stays_light() -> None:
    """The ``dspyo3`` CLI imports every plugin at start-up: this one must not pull in NumPy, SciPy, the runner or the
    registry until a command runs."""
    import sys

    code = ("import sys, dspyo3_optimize.plugin, dspyo3_optimize\n"
            "heavy = ['numpy', 'scipy', 'matplotlib', 'dspyo3_optimize.runner', 'dspyo3_optimize.registry',\n"
            "         'dspyo3_optimize.stats', 'dspyo3_optimize.data', 'dspyo3_optimize.evaluate']\n"
            "print([m for m in heavy if m in sys.modules])\n"
            "print(dspyo3_optimize.compare.__module__, 'numpy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[]", "dspyo3_optimize.stats False"]


def test_one_state_checksum_for_trials_checkpoints_and_the_registry(tmp_path: Path, gsm8k_train: list[Any],
                                                                      gsm8k_lm: Any) -> None:
    from dspyo3_core import commands
    from dspyo3_optimize import common, plugin, runner
    from dspyo3_optimize.programs import registry
    from dspyo3_optimize.registry import open_registry, state_checksum
    from dspyo3_optimize.runner import RegisterSpec, load_trial_program

    assert plugin.echo_json is commands.echo_json and registry.now is runner.now is common.now
    config = _tiny(tmp_path, gsm8k_train, gsm8k_lm, register=RegisterSpec("tiny", registry=str(tmp_path / "reg")))
    report = run(config)
    [trial] = report.trials
    meta = open_registry(tmp_path / "reg").meta("tiny")
    assert trial["state_sha256"] == meta.checksum  # the trial file holds the bytes the registry stores
    program = load_trial_program(tmp_path / "run", 0, dspy.ChainOfThought("question -> answer"))
    assert state_checksum(program) == meta.checksum
    checkpoint = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    base = runner._build_program(config.program)
    assert checkpoint["fingerprint_parts"]["program_state"] == state_checksum(base)


def test_event_log_goes_through_core_jsonl_helpers_and_survives_a_torn_line(tmp_path: Path) -> None:
    rundir = Run(tmp_path / "run")
    rundir.event("session_started", run_id="r")
    with rundir.events_path.open("ab") as handle:  # a writer killed mid-line
        handle.write(b'{"event": "trial_sta')
    rundir.event("trial_started", trial=0, when=time)  # non-JSON values are written as text
    events = rundir.events()
    assert [e["event"] for e in events] == ["session_started", "trial_started"]
    assert events[1]["trial"] == 0 and "module" in events[1]["when"] and events[1]["pid"] == os.getpid()
