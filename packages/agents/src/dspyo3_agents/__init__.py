"""dspyo3-agents: agents for DSPy: tool registry with schema validation and timeouts, ReAct, persisted state,
trajectories, parallel agents.

This package is a skeleton: it installs, imports and registers its plugin (the ``dspyo3 agents`` command
group) through the ``dspyo3`` entry-point group. It claims no features yet.
"""

__version__ = "0.1.0"
