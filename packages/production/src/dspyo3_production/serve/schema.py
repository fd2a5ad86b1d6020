"""Request and response schemas of served programs: pydantic models built once per program version from its DSPy
signature, input validation with field-level 422 errors, JSON output values, and the OpenAPI 3.1 document.

Which fields a program has: a module with a ``signature`` attribute (``dspy.Predict`` and its kin) uses it; any
other module takes its **inputs from its first predictor** and its **outputs from its last predictor** (in
``named_predictors()`` order), e.g. ``dspy.ChainOfThought("question -> answer")`` serves ``question`` in and
``reasoning`` + ``answer`` out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic
from pydantic_core import to_jsonable_python

from dspyo3_production.serve.errors import ServeError

__all__ = ["ERROR_SCHEMA", "ProgramSchema", "openapi_document", "program_schema"]

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "request_id"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "fields": {"anyOf": [{"type": "null"}, {"type": "array", "items": {
                    "type": "object", "required": ["field", "problem"],
                    "properties": {"field": {"type": "string"}, "problem": {"type": "string"},
                                   "expected": {"type": ["string", "null"]}}}}]},
            },
        },
        "request_id": {"type": ["string", "null"]},
    },
}

_USAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
                   "total_tokens": {"type": "integer"}},
}

_SSE_EVENT: dict[str, Any] = {
    "description": "One server-sent event: `chunk` (data {field, text, predictor}), `status` (data {message}), "
                   "then `prediction` (data: the predict response) or `error` (data: the error body)",
    "type": "object",
    "required": ["event", "data"],
    "properties": {"event": {"enum": ["chunk", "status", "prediction", "error"]}, "data": {"type": "string"}},
}

_JSON_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean",
               "array": "array", "object": "object", "null": "null"}


def _fields_of(module: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (input fields, output fields) of ``module``: its ``signature``'s, else its first predictor's inputs and
    its last predictor's outputs (pydantic ``FieldInfo`` by name)."""
    signature = getattr(module, "signature", None)
    if signature is not None and hasattr(signature, "input_fields"):
        return dict(signature.input_fields), dict(signature.output_fields)
    predictors = [predictor for _, predictor in module.named_predictors()] \
        if hasattr(module, "named_predictors") else []
    if not predictors:
        raise ValueError(f"{type(module).__name__} has no signature and no predictors; a served program needs "
                         "input and output fields")
    return dict(predictors[0].signature.input_fields), dict(predictors[-1].signature.output_fields)


def _model(name: str, fields: Mapping[str, Any], forbid_extra: bool) -> type[pydantic.BaseModel]:
    definitions: dict[str, Any] = {}
    for field_name, info in fields.items():
        annotation = info.annotation if info.annotation is not None else Any
        description = (info.json_schema_extra or {}).get("desc") if isinstance(info.json_schema_extra, dict) \
            else None
        if isinstance(description, str) and description.startswith("${"):
            description = None
        default = info.default if not info.is_required() else ...
        definitions[field_name] = (annotation, pydantic.Field(default, description=description))
    config = pydantic.ConfigDict(extra="forbid" if forbid_extra else "ignore", arbitrary_types_allowed=True)
    return pydantic.create_model(name, __config__=config, **definitions)


def _json_schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    try:
        return model.model_json_schema(ref_template="#/components/schemas/{model}")
    except Exception:  # a field type with no JSON Schema (an arbitrary class): accept any value for it
        properties: dict[str, Any] = {name: {} for name in model.model_fields}
        required = [name for name, info in model.model_fields.items() if info.is_required()]
        return {"type": "object", "title": model.__name__, "properties": properties, "required": required}


def _expected(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> str | None:
    """A short name of the JSON type ``schema`` describes (``string``, ``array of integer``, ``A | B``...)."""
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = defs.get(ref.rsplit("/", 1)[-1], {})
        return "object" if target.get("type") == "object" or "properties" in target else _expected(target, defs)
    kind = schema.get("type")
    if isinstance(kind, str):
        if kind == "array" and isinstance(schema.get("items"), Mapping):
            inner = _expected(schema["items"], defs)
            return f"array of {inner}" if inner else "array"
        return _JSON_TYPES.get(kind, kind)
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    options = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(options, list):
        names = [name for name in (_expected(o, defs) for o in options if isinstance(o, Mapping)) if name]
        return " | ".join(dict.fromkeys(names)) or None
    return None


_PROBLEMS = {"missing": "missing", "extra_forbidden": "not an input field of this program"}


@dataclass(frozen=True)
class ProgramSchema:
    """The schemas of one program version: input and output pydantic models (built once), their JSON Schemas, and
    the input and output field names."""

    name: str
    input_model: type[pydantic.BaseModel]
    output_model: type[pydantic.BaseModel]
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    input_fields: tuple[str, ...]
    output_fields: tuple[str, ...]
    string_outputs: tuple[str, ...]
    _expected: Mapping[str, str | None]
    _plain_inputs: bool

    def expected_type(self, field: str) -> str | None:
        """The JSON type input ``field`` expects, as error messages name it (``"string"``, ``"array of
        integer"``), or None when any value is accepted."""
        return self._expected.get(field)

    def validate(self, body: Any) -> dict[str, Any]:
        """The program's keyword inputs from a decoded JSON ``body``.

        Raises:
            ServeError: 422 ``validation_error`` with one ``{"field", "problem", "expected"}`` per wrong, missing
                or unknown field (or the whole body, when it is not a JSON object).
        """
        if not isinstance(body, dict):
            raise ServeError(422, "the request body must be a JSON object of the program's input fields",
                             "validation_error", fields=[{"field": "", "problem": "not a JSON object",
                                                          "expected": "object"}])
        if self._plain_inputs and len(body) == len(self.input_fields) and \
                all(type(body.get(name)) is str for name in self.input_fields):
            return body  # the common case (every input a string, all given): no model needed
        try:
            parsed = self.input_model.model_validate(body)
        except pydantic.ValidationError as exc:
            problems = []
            for error in exc.errors(include_url=False, include_input=False):
                location = [str(part) for part in error.get("loc", ())]
                top = location[0] if location else ""
                problem = _PROBLEMS.get(error.get("type", ""), error.get("msg", "invalid"))
                problems.append({"field": ".".join(location), "problem": problem,
                                 "expected": self._expected.get(top)})
            names = ", ".join(sorted({str(p["field"]) for p in problems}))
            raise ServeError(422, f"invalid input field(s): {names}; expected: {self.describe_inputs()}",
                             "validation_error", fields=problems) from None
        return {name: getattr(parsed, name) for name in self.input_fields}

    def describe_inputs(self) -> str:
        """``question (string), k (integer)``: the input fields and their types, for messages."""
        return ", ".join(f"{name} ({self._expected.get(name) or 'any'})" for name in self.input_fields)

    def outputs(self, prediction: Any) -> dict[str, Any]:
        """The JSON-ready output fields of ``prediction`` (a ``dspy.Prediction``)."""
        values: dict[str, Any] = {}
        for name in self.output_fields:
            try:
                value = prediction[name]
            except (KeyError, AttributeError, TypeError):
                value = getattr(prediction, name, None)
            if value is None or type(value) in (str, int, float, bool):
                values[name] = value
            else:
                values[name] = to_jsonable_python(value, fallback=str)
        return values


def _model_name(program: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in program.replace("-", "_").replace(".", "_").split("_")
                   if part) or "Program"


def program_schema(name: str, module: Any) -> ProgramSchema:
    """The :class:`ProgramSchema` of ``module`` served as ``name`` (see the module docstring for which fields).

    Raises:
        ValueError: the module has neither a signature nor predictors.
    """
    inputs, outputs = _fields_of(module)
    base = _model_name(name)
    input_model = _model(f"{base}Input", inputs, forbid_extra=True)
    output_model = _model(f"{base}Output", outputs, forbid_extra=False)
    input_schema = _json_schema(input_model)
    output_schema = _json_schema(output_model)
    defs = {**input_schema.get("$defs", {}), **output_schema.get("$defs", {})}
    expected = {field: _expected(schema, defs) for field, schema in input_schema.get("properties", {}).items()}
    plain = all(info.annotation is str and info.is_required() for info in inputs.values())
    strings = tuple(field for field, info in outputs.items() if info.annotation is str)
    return ProgramSchema(name, input_model, output_model, input_schema, output_schema, tuple(inputs),
                         tuple(outputs), strings, expected, plain)


def _hoist(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    schema = dict(schema)
    for key, value in schema.pop("$defs", {}).items():
        components.setdefault(key, value)
    return schema


def _error_responses(*statuses: int) -> dict[str, Any]:
    descriptions = {400: "Malformed JSON", 401: "Missing or unknown API key", 403: "Forbidden",
                    404: "Unknown program", 413: "Request body too large", 422: "Wrong or missing input fields",
                    429: "Rate limit or budget reached (Retry-After)", 500: "Unexpected failure",
                    503: "Overloaded or not ready (Retry-After)", 504: "Request timed out"}
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    out: dict[str, Any] = {}
    for status in statuses:
        entry: dict[str, Any] = {"description": descriptions[status], **ref, "headers": _headers(status)}
        out[str(status)] = entry
    return out


def _headers(status: int, program: bool = False) -> dict[str, Any]:
    headers: dict[str, Any] = {"x-request-id": {"$ref": "#/components/headers/RequestId"}}
    if program:
        headers["x-dspyo3-program-version"] = {"$ref": "#/components/headers/ProgramVersion"}
        headers["x-dspyo3-arm"] = {"$ref": "#/components/headers/Arm"}
    if status in (429, 503):
        headers["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
    return headers


def openapi_document(programs: Sequence[ProgramSchema], *, title: str = "dspyo3 serve", version: str = "1",
                     auth: bool = False, batch_max_items: int = 100) -> dict[str, Any]:
    """The OpenAPI 3.1 document of an app serving ``programs``: for each, predict, stream and batch operations
    with its own request and response schemas; plus the listing, health, readiness and metrics routes, the
    error schema and the response headers."""
    components: dict[str, Any] = {"Error": ERROR_SCHEMA, "Usage": _USAGE_SCHEMA}
    paths: dict[str, Any] = {}
    request_params = [
        {"name": "x-request-id", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "Kept as the request id when it is 1-128 letters, digits, '-', '_', '.', ':'"},
        {"name": "x-dspyo3-user", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "Caller key for the sticky A/B split (default: the tenant)"},
    ]
    errors = (400, 404, 413, 422, 429, 500, 503, 504) + ((401, 403) if auth else ())
    for program in programs:
        base = _model_name(program.name)
        components[f"{base}Input"] = _hoist(program.input_schema, components)
        components[f"{base}Output"] = _hoist(program.output_schema, components)
        components[f"{base}Response"] = {
            "type": "object",
            "required": ["outputs", "program", "version", "arm", "usage", "cost", "cache_hit", "request_id"],
            "properties": {
                "outputs": {"$ref": f"#/components/schemas/{base}Output"},
                "program": {"type": "string"}, "version": {"type": "string"},
                "arm": {"type": "string", "enum": ["a", "b"]},
                "usage": {"$ref": "#/components/schemas/Usage"},
                "cost": {"type": ["number", "null"]}, "cache_hit": {"type": "boolean"},
                "request_id": {"type": "string"},
            },
        }
        components[f"{base}BatchResponse"] = {
            "type": "object", "required": ["results", "program", "version", "request_id"],
            "properties": {
                "results": {"type": "array", "items": {"anyOf": [
                    {"allOf": [{"$ref": f"#/components/schemas/{base}Response"},
                               {"type": "object", "properties": {"ok": {"const": True}}}]},
                    {"type": "object", "required": ["ok", "error"],
                     "properties": {"ok": {"const": False},
                                    "error": ERROR_SCHEMA["properties"]["error"]}}]}},
                "program": {"type": "string"}, "version": {"type": "string"}, "request_id": {"type": "string"},
            },
        }
        body = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{base}Input"}}}}
        path = f"/v1/programs/{program.name}"
        paths[path] = {"post": {
            "operationId": f"predict_{program.name}", "summary": f"Run {program.name}",
            "parameters": request_params, "requestBody": body,
            "responses": {"200": {"description": "The program's outputs", "headers": _headers(200, True),
                                  "content": {"application/json": {
                                      "schema": {"$ref": f"#/components/schemas/{base}Response"}}}},
                          **_error_responses(*errors)}}}
        paths[f"{path}/stream"] = {"post": {
            "operationId": f"stream_{program.name}", "summary": f"Stream {program.name} (server-sent events)",
            "parameters": request_params, "requestBody": body,
            "responses": {"200": {"description": "Events: chunk, status, then prediction or error",
                                  "headers": _headers(200, True),
                                  "content": {"text/event-stream": {"schema": _SSE_EVENT}}},
                          **_error_responses(*errors)}}}
        paths[f"{path}/batch"] = {"post": {
            "operationId": f"batch_{program.name}", "summary": f"Run {program.name} on several inputs",
            "parameters": request_params,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["items"], "additionalProperties": False,
                "properties": {"items": {"type": "array", "maxItems": batch_max_items,
                                         "items": {"$ref": f"#/components/schemas/{base}Input"}}}}}}},
            "responses": {"200": {"description": "One result per item, in order", "headers": _headers(200, True),
                                  "content": {"application/json": {
                                      "schema": {"$ref": f"#/components/schemas/{base}BatchResponse"}}}},
                          **_error_responses(*errors)}}}
    listing = {"type": "object", "required": ["programs"], "properties": {"programs": {"type": "array", "items": {
        "type": "object", "required": ["name", "version", "versions", "input_schema", "output_schema", "status"],
        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                       "stage": {"type": ["string", "null"]}, "versions": {"type": "object"},
                       "input_schema": {"type": "object"}, "output_schema": {"type": "object"},
                       "status": {"type": "object"}}}}}}
    simple = {"200": {"description": "OK", "headers": _headers(200)}}
    paths["/v1/programs"] = {"get": {"operationId": "list_programs", "summary": "The programs served",
                                     "responses": {"200": {"description": "OK", "headers": _headers(200),
                                                           "content": {"application/json": {"schema": listing}}},
                                                   **_error_responses(*((401, 403) if auth else ()))}}}
    status_schema = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
    paths["/healthz"] = {"get": {"operationId": "healthz", "summary": "Liveness", "responses": {
        "200": {"description": "The process runs", "headers": _headers(200),
                "content": {"application/json": {"schema": status_schema}}}}}}
    ready = {"description": "Readiness", "headers": _headers(200),
             "content": {"application/json": {"schema": {**status_schema, "properties": {
                 "status": {"type": "string"}, "programs": {"type": "object"},
                 "reasons": {"type": "array", "items": {"type": "string"}}}}}}}
    paths["/readyz"] = {"get": {"operationId": "readyz", "summary": "Readiness: programs loaded, checks pass",
                                "responses": {"200": ready, "503": {**ready, "headers": _headers(503)}}}}
    paths["/metrics"] = {"get": {"operationId": "metrics", "summary": "Prometheus metrics", "responses": {
        "200": {**simple["200"], "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
    paths["/openapi.json"] = {"get": {"operationId": "openapi", "summary": "This document", "responses": {
        "200": {**simple["200"], "content": {"application/json": {"schema": {"type": "object"}}}}}}}
    paths["/docs"] = {"get": {"operationId": "docs", "summary": "Interactive docs (HTML)", "responses": {
        "200": {**simple["200"], "content": {"text/html": {"schema": {"type": "string"}}}}}}}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "headers": {
                "RequestId": {"description": "The request id (the caller's x-request-id if sane)",
                              "schema": {"type": "string"}},
                "ProgramVersion": {"description": "The program version that answered",
                                   "schema": {"type": "string"}},
                "Arm": {"description": "The A/B arm that answered", "schema": {"type": "string",
                                                                               "enum": ["a", "b"]}},
                "RetryAfter": {"description": "Seconds to wait before retrying", "schema": {"type": "integer",
                                                                                            "minimum": 1}},
            },
        },
    }
    if auth:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}
        document["security"] = [{"bearer": []}, {"apiKey": []}]
    return document
