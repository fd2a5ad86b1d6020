"""``type_validator``: check a ``dspy.Prediction`` against its signature's output types."""

from __future__ import annotations

from typing import Any

import pydantic

__all__ = ["PredictionValidationError", "validate_prediction"]


class PredictionValidationError(ValueError):
    """Outputs that do not match the signature. ``problems`` is a list of ``(field, expected, received, message)``."""

    def __init__(self, signature: str, problems: list[tuple[str, str, Any, str]]) -> None:
        self.signature = signature
        self.problems = problems
        lines = [f"{signature}: {len(problems)} output field{'s' if len(problems) != 1 else ''} do not match "
                 "the signature"]
        for field, expected, received, message in problems:
            lines.append(f"  - `{field}`: expected {expected}, got {received!r} ({message})")
        super().__init__("\n".join(lines))


def validate_prediction(prediction: Any, signature: Any) -> dict[str, Any]:
    """Validate the prediction's output fields (missing ones included) and return them converted to the declared
    types; raise :class:`PredictionValidationError` naming each wrong field, its expected type and the value."""
    from dspyo3_core.inspector import render_type

    fields = signature.output_fields
    values = {name: prediction.get(name) if hasattr(prediction, "get") else getattr(prediction, name, None)
              for name in fields}  # a field that is absent is told apart below
    problems: list[tuple[str, str, Any, str]] = []
    converted: dict[str, Any] = {}
    present = set(prediction.keys()) if hasattr(prediction, "keys") else {n for n in fields if hasattr(prediction, n)}
    for name, info in fields.items():
        expected = render_type(info.annotation)
        if name not in present:
            if not info.is_required():
                converted[name] = info.get_default(call_default_factory=True)
            else:
                problems.append((name, expected, None, "missing"))
            continue
        try:
            converted[name] = pydantic.TypeAdapter(info.annotation).validate_python(values[name])
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            detail = first["msg"] + (f" at {where}" if where else "")
            problems.append((name, expected, values[name], detail))
    if problems:
        raise PredictionValidationError(getattr(signature, "__name__", "Signature"), problems)
    return converted
