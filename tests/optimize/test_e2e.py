"""Offline end to end on GSM8K: BootstrapFewShot and MIPROv2 (auto="light") runs against the loopback LM; the best
program is registered, promoted, loaded back from the registry and answers exactly as the compiled one did. Then
``dspyo3 optimize compare`` with a quality gate, passing and failing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dspy
import pytest
from click.testing import CliRunner

from dspyo3_core.cli import build_cli
from dspyo3_core.testing.server import LMServer
from dspyo3_optimize import ProgramRegistry, RegisterSpec, RunConfig, TrialSpec, evaluate, run
from dspyo3_optimize.examples import gsm8k_program
from dspyo3_optimize.runner import load_trial_program


def _answers(program: Any, examples: list[Any], lm: Any) -> list[tuple[str, str]]:
    with dspy.context(lm=lm):
        return [(p.reasoning, p.answer) for p in (program(**ex.inputs()) for ex in examples)]


def test_bootstrap_and_mipro_run_register_promote_load(tmp_path: Path, gsm8k_train: list[Any],
                                                        gsm8k_test: list[Any], gsm8k_lm: Any,
                                                        gsm8k_server: LMServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from dspyo3_optimize import runner as runner_module

    dev_results: list[Any] = []  # what each trial's in-memory compiled program answered on the dev set

    def capturing_evaluate(*args: Any, **kwargs: Any) -> Any:
        result = runner_module_evaluate(*args, **kwargs)
        dev_results.append(result)
        return result

    runner_module_evaluate = runner_module.evaluate
    monkeypatch.setattr(runner_module, "evaluate", capturing_evaluate)
    registry_dir = tmp_path / "registry"
    config = RunConfig(
        name="gsm8k-e2e", program="dspyo3_optimize.examples:gsm8k_program", metric="gsm8k",
        trials=[
            TrialSpec("bootstrap_fewshot", {"max_bootstrapped_demos": 2, "max_labeled_demos": 0}),
            TrialSpec("MIPROv2", {"auto": "light", "max_bootstrapped_demos": 2, "max_labeled_demos": 0,
                                  "num_threads": 2, "verbose": False}, seed=3, name="mipro-light"),
        ],
        out_dir=tmp_path / "run", trainset=gsm8k_train[:12], devset=gsm8k_train[12:22], lm=gsm8k_lm,
        register=RegisterSpec("gsm8k-cot", registry=str(registry_dir)), concurrency=4,
    )
    report = run(config)
    assert report.status == "finished"
    names = [t["name"] for t in report.trials]
    assert names == ["baseline", "bootstrap_fewshot", "mipro-light"]
    assert all(t["status"] == "finished" for t in report.trials)
    baseline, bootstrap, mipro = (t["score"] for t in report.trials)
    assert bootstrap > baseline and mipro > baseline  # the responder rewards demos and "step by step"
    assert len(report.trials[2]["candidate_scores"]) >= 5  # MIPROv2's own trials, on the metric's scale
    assert all(0 <= s <= 1 for s in report.trials[2]["candidate_scores"])
    assert Path(report.report_path).is_file() and report.plot_path and Path(report.plot_path).stat().st_size > 1000
    saved = json.loads(Path(report.report_path).read_text())
    assert saved["best_trial"] == report.best_trial and saved["registered"]["version"] == "1.0.0"

    registry = ProgramRegistry(registry_dir)
    meta = registry.meta("gsm8k-cot", "1.0.0")
    assert meta.run_id == report.run_id and meta.metric == "gsm8k" and meta.dataset_hash
    assert meta.scores["dev"].value == report.best_score and meta.scores["dev"].ci_low is not None
    assert meta.optimizer and meta.optimizer["name"] in ("bootstrap_fewshot", "MIPROv2")
    assert registry.promote("gsm8k-cot", "1.0.0", to="staging") == "1.0.0"
    assert registry.promote("gsm8k-cot", to="prod") == "1.0.0"

    loaded = registry.load("gsm8k-cot", "prod")  # a fresh program from the recorded factory, JSON state only
    # the program loaded back from the registry answers the dev set exactly as the optimizer's in-memory one did
    assert len(dev_results) == 3 and report.best_trial is not None
    in_memory = dev_results[report.best_trial]
    reloaded = evaluate(loaded, gsm8k_train[12:22], "gsm8k", lm=gsm8k_lm, concurrency=4)
    assert reloaded.predictions == in_memory.predictions and all(p for p in reloaded.predictions)
    assert reloaded.scores == in_memory.scores == report.trials[report.best_trial]["dev_scores"]
    compiled = load_trial_program(tmp_path / "run", report.best_trial or 0, gsm8k_program())
    requests_before = len(gsm8k_server.requests)
    held_out = gsm8k_test[:8]
    assert _answers(loaded, held_out, gsm8k_lm) == _answers(compiled, held_out, gsm8k_lm)
    assert len(gsm8k_server.requests) == requests_before + 16  # really asked the LM both times
    assert loaded.dump_state() == compiled.dump_state()
    again = run(config)  # a finished run resumes as a no-op: nothing re-run, nothing registered twice
    assert again.resumed_trials == [0, 1, 2] and registry.versions("gsm8k-cot") == ["1.0.0"]

    # both optimizers' programs go through the registry round trip, whichever one won
    for index in (1, 2):
        compiled = load_trial_program(tmp_path / "run", index, gsm8k_program())
        version = registry.register("gsm8k-cot", compiled, parent="1.0.0",
                                    optimizer={"name": report.trials[index]["optimizer"]}).version
        registry.promote("gsm8k-cot", version, to="prod")
        loaded = registry.load("gsm8k-cot", "prod")
        assert loaded.dump_state() == compiled.dump_state()
        assert _answers(loaded, held_out, gsm8k_lm) == _answers(compiled, held_out, gsm8k_lm)
    mipro_state = registry.state("gsm8k-cot", "prod")[0]
    assert mipro_state["predict"]["signature"]["instructions"] != gsm8k_program().predict.signature.instructions \
        or mipro_state["predict"]["demos"]  # MIPROv2 changed the instructions or picked demos
    assert registry.rollback("gsm8k-cot", "prod") == "1.0.1"


def test_compare_cli_gates(tmp_path: Path, gsm8k_train: list[Any], gsm8k_test: list[Any], gsm8k_lm: Any,
                           gsm8k_server: LMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = ProgramRegistry(tmp_path / "registry")
    baseline = gsm8k_program()
    registry.register("gsm8k", baseline, factory="dspyo3_optimize.examples:gsm8k_program", metric="gsm8k",
                      extra={"preset": "gsm8k"})
    with dspy.context(lm=gsm8k_lm):
        optimized = dspy.BootstrapFewShot(metric=lambda e, p, t=None: p.answer == e.answer,
                                          max_bootstrapped_demos=2, max_labeled_demos=0).compile(
            gsm8k_program(), trainset=gsm8k_train[:10])
    registry.register("gsm8k", optimized, parent="1.0.0")
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"question": ex.question, "answer": f"#### {ex.answer}"}) + "\n"
                            for ex in gsm8k_test))
    monkeypatch.setenv("DSPYO3_LM", "openai-compatible/gsm8k-sim")
    monkeypatch.setenv("DSPYO3_LM_API_BASE", gsm8k_server.api_base)
    monkeypatch.setenv("DSPYO3_REGISTRY", str(tmp_path / "registry"))
    cli = build_cli()
    runner = CliRunner()

    good = runner.invoke(cli, ["optimize", "compare", "gsm8k@1.0.0", "gsm8k@1.0.1", "--data", str(data),
                               "--gate", "delta>0.02,p<0.05", "--json"])
    assert good.exit_code == 0, good.output
    result = json.loads(good.output)
    assert result["n"] == 30 and result["test"] == "mcnemar-exact" and result["passed"] is True
    assert (result["errors_a"], result["errors_b"], result["errors"]) == (0, 0, 0)
    expected_a = evaluate(registry.load("gsm8k", "1.0.0"), _gsm8k(data), "gsm8k", lm=gsm8k_lm).mean
    assert result["mean_a"] == pytest.approx(expected_a) and result["delta"] > 0.2 and result["p_value"] < 0.01

    bad = runner.invoke(cli, ["optimize", "compare", "gsm8k@1.0.1", "gsm8k@1.0.0", "--data", str(data),
                              "--gate", "delta>0.02,p<0.05"])
    assert bad.exit_code == 1, bad.output
    assert "FAIL delta>0.02" in bad.output and "PASS p<0.05" in bad.output
    assert "errors: A 0, B 0 of 30 examples" in bad.output  # how many examples raised, beside the gates

    usage = runner.invoke(cli, ["optimize", "compare", "gsm8k@1.0.0", "gsm8k@1.0.1", "--data", str(data),
                                "--gate", "gain>1"])
    assert usage.exit_code == 2 and "unknown gate field 'gain'" in usage.output

    listing = runner.invoke(cli, ["registry", "list", "gsm8k"])
    assert listing.exit_code == 0 and "1.0.1" in listing.output and "dev" in listing.output
    assert runner.invoke(cli, ["registry", "promote", "gsm8k", "1.0.0", "--to", "prod"]).exit_code == 0
    assert runner.invoke(cli, ["registry", "promote", "gsm8k", "1.0.1", "--to", "prod"]).exit_code == 0
    rolled = runner.invoke(cli, ["registry", "rollback", "gsm8k", "--stage", "prod"])
    assert rolled.exit_code == 0 and "rolled back to 1.0.0" in rolled.output
    shown = json.loads(runner.invoke(cli, ["registry", "show", "gsm8k@prod"]).output)
    assert shown["version"] == "1.0.0" and "prod" in shown["stages"]
    diff = json.loads(runner.invoke(cli, ["registry", "diff", "gsm8k", "1.0.0", "1.0.1"]).output)
    assert diff["predictors"]["predict"]["demos"]["b"] == 2
    evaluated = runner.invoke(cli, ["optimize", "evaluate", "gsm8k@prod", "--data", str(data), "--json"])
    assert evaluated.exit_code == 0 and json.loads(evaluated.output)["mean"] == pytest.approx(expected_a)
    unknown = runner.invoke(cli, ["optimize", "compare", "gsm8k@1.0.0", "gsm8k@7.0.0", "--data", str(data)])
    assert unknown.exit_code == 1 and "gsm8k has no version '7.0.0'" in unknown.output
    missing = runner.invoke(cli, ["registry", "show", "gsm8k@9.9.9"])
    assert missing.exit_code == 1 and "versions: 1.0.0, 1.0.1" in missing.output


def _gsm8k(path: Path) -> list[Any]:
    from dspyo3_optimize.data import load_examples

    return load_examples(path, preset="gsm8k")
