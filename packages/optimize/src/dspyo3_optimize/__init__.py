"""dspyo3-optimize: optimizer runs for DSPy with progress and checkpoints, a versioned registry of compiled programs,
evaluation, statistical comparison and quality gates.

Public API:

* :class:`RunConfig`, :func:`run` — optimizer trials with checkpoints, budgets, a report and a plot
  (``dspyo3 optimize run CONFIG.toml``);
* :class:`ProgramRegistry`, :func:`open_registry` — compiled programs as DSPy JSON state with metadata, stages,
  checksums and locks (``dspyo3 registry ...``);
* :func:`evaluate` — per-example scores, locally on asyncio or on Ray;
* :func:`compare`, :func:`parse_gates`, :func:`check_gates` — paired bootstrap, McNemar / t / Wilcoxon, quality gates
  (``dspyo3 optimize compare A B --data FILE --gate ...``);
* :func:`load_examples`, :func:`split`, :func:`dataset_hash` — datasets.
"""

from dspyo3_optimize.data import dataset_hash, load_examples, split
from dspyo3_optimize.evaluate import EvalResult, LocalExecutor, RayExecutor, evaluate
from dspyo3_optimize.metrics import exact_match, numeric_match, resolve_metric
from dspyo3_optimize.optimizers import build_optimizer, compile_program, get_optimizer, optimizer_registry
from dspyo3_optimize.registry import (
    IntegrityError,
    NotFoundError,
    ProgramRegistry,
    ProgramVersion,
    RegistryError,
    Score,
    open_registry,
)
from dspyo3_optimize.runner import DataSpec, RegisterSpec, RunConfig, RunError, RunReport, TrialSpec, run
from dspyo3_optimize.stats import Comparison, bootstrap_ci, check_gates, compare, mcnemar, paired_bootstrap, parse_gates

__version__ = "0.1.0"

__all__ = [
    "Comparison",
    "DataSpec",
    "EvalResult",
    "IntegrityError",
    "LocalExecutor",
    "NotFoundError",
    "ProgramRegistry",
    "ProgramVersion",
    "RayExecutor",
    "RegisterSpec",
    "RegistryError",
    "RunConfig",
    "RunError",
    "RunReport",
    "Score",
    "TrialSpec",
    "__version__",
    "bootstrap_ci",
    "build_optimizer",
    "check_gates",
    "compare",
    "compile_program",
    "dataset_hash",
    "evaluate",
    "exact_match",
    "get_optimizer",
    "load_examples",
    "mcnemar",
    "numeric_match",
    "open_registry",
    "optimizer_registry",
    "paired_bootstrap",
    "parse_gates",
    "resolve_metric",
    "run",
    "split",
]
