"""The ``dspyo3_agents.tools`` package: each module imports only the ones below it, and every name the package
exposes is the one ``dspyo3_agents`` exposes."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import dspyo3_agents
import dspyo3_agents.tools as tools

# lowest first: a module may import only modules before it
ORDER = ["errors", "schema", "policy", "execute", "mcp", "registry"]
ALLOWED_BELOW = {"schema": {"errors"}, "policy": {"errors"}}  # schema and policy are side by side

PUBLIC = ["ENABLE_ENV", "MAX_HUNG_CALLS", "RISKY_TAGS", "ArgumentProblem", "RegisteredTool", "RegistryTool",
          "ToolArgumentError", "ToolBreaker", "ToolCircuitOpenError", "ToolDisabledError", "ToolError",
          "ToolExecutionError", "ToolNotGrantedError", "ToolOptions", "ToolRegistry", "ToolTimeoutError",
          "UnknownToolError", "parse_docstring", "tool_deadline", "tool_options", "tool_retry"]


def imported_tools_modules(name: str) -> set[str]:
    """The ``dspyo3_agents.tools`` modules that module ``name`` imports, at any depth of its code."""
    module = importlib.import_module(f"dspyo3_agents.tools.{name}")
    tree = ast.parse(Path(str(module.__file__)).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            target = node.module if node.level == 0 else f"dspyo3_agents.tools.{node.module}"
            if target.startswith("dspyo3_agents.tools."):
                found.add(target.rsplit(".", 1)[1])
            elif target == "dspyo3_agents.tools" or target == "dspyo3_agents":
                found.add("__init__")
        elif isinstance(node, ast.Import):
            found |= {a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith("dspyo3_agents.tools.")}
    return found


def test_each_tools_module_imports_only_lower_ones() -> None:
    for i, name in enumerate(ORDER):
        allowed = ALLOWED_BELOW.get(name, set(ORDER[:i]))
        assert imported_tools_modules(name) <= allowed, name


def test_the_package_exposes_the_same_objects_as_dspyo3_agents() -> None:
    assert set(PUBLIC) <= set(tools.__all__)
    for name in PUBLIC:
        value = getattr(tools, name)
        if hasattr(dspyo3_agents, name) or name in dspyo3_agents.__all__:
            assert getattr(dspyo3_agents, name) is value, name
