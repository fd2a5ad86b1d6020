"""Code generation from the signature IR (:mod:`dspyo3_core.ir`): Rust (serde), Pydantic and JSON Schema.

For a signature ``X`` every target has ``XInput`` and ``XOutput``; nested Pydantic models become their own types
named after the model class, ``Literal[...]`` and ``Enum`` become enums, ``Optional`` an optional value, ``list``
a sequence, ``dict[str, T]`` a map. Rust output compiles with only ``serde`` and ``serde_json``. An annotation
no target can express raises :class:`~dspyo3_core.ir.UnsupportedTypeError` naming the field and the type.
"""

from __future__ import annotations

import json
import keyword
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dspyo3_core.inspector import InspectError, as_module, resolve
from dspyo3_core.ir import UnsupportedTypeError, signature_ir

__all__ = ["LANGUAGES", "generate", "pydantic_source", "jsonschema_document", "rust_source", "signatures_of"]

LANGUAGES = ("rust", "pydantic", "jsonschema")

_RUST_KEYWORDS = {
    "as", "async", "await", "break", "const", "continue", "dyn", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "static", "struct",
    "trait", "true", "type", "unsafe", "use", "where", "while", "abstract", "become", "box", "do", "final", "gen",
    "macro", "override", "priv", "try", "typeof", "unsized", "virtual", "yield",
}
_NOT_RAW = {"self", "Self", "super", "crate", "_"}
# names the generated Rust uses itself: a model or enum called like one of these gets a suffix
_RUST_RESERVED_TYPES = {"String", "Vec", "Option", "Box", "HashMap", "Serialize", "Deserialize", "Self", "Some",
                        "None", "Ok", "Err", "Result", "std", "serde", "serde_json", "i64", "f64", "bool", "str"}


def signatures_of(target: str, program: str | None = None) -> list[dict[str, Any]]:
    """The IR of every signature TARGET names: ``pkg.mod:Signature``, a module (each predictor), or a saved
    program ``.json`` loaded into ``program`` (``pkg.mod:Class``; the JSON alone holds no types)."""
    import dspy

    if target.endswith(".json"):
        if program is None:
            raise InspectError(f"{target}: a saved program stores no field types; pass --program pkg.module:Class "
                               "to load it into its class")
        from dspyo3_core.program_state import UnsafeStateError, load_state_file

        module = as_module(resolve(program), program)
        try:
            # learned state only: a file carrying LM settings, other attributes or code is refused, never applied
            module.load_state(load_state_file(target, program=module))
        except UnsafeStateError as exc:
            raise InspectError(str(exc)) from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            # a missing, malformed, too deeply nested or foreign file: name it, not a traceback
            if isinstance(exc, OSError):
                raise InspectError(f"{target}: cannot read it ({exc.strerror or exc})") from None
            detail = "JSON nested too deeply to read" if isinstance(exc, RecursionError) else \
                f"{type(exc).__name__}: {exc}"
            raise InspectError(f"{target}: not a saved program DSPy can load into {program} ({detail}); save it "
                               "with program.save(path) from the same class") from None
    else:
        obj = resolve(target)
        if isinstance(obj, type) and issubclass(obj, dspy.Signature):
            ir = signature_ir(obj)
            if ir["name"] in {"StringSignature", "Signature"}:  # a string-form signature: name it as imported
                ir["name"] = target.rpartition(":")[2].rpartition(".")[2]
            return [ir]
        module = as_module(obj, target)
    found: list[dict[str, Any]] = []
    for name, predictor in module.named_predictors():
        ir = signature_ir(predictor.signature)
        if ir["name"] in {"StringSignature", "Signature"}:
            ir["name"] = pascal_case(name.replace(".", "_"))
        if ir not in found:  # the same signature used by several predictors is generated once
            found.append(ir)
    if not found:
        raise InspectError(f"{target} has no predictors")
    return found


# -- naming ------------------------------------------------------------------------------------------------------


def pascal_case(text: str) -> str:
    """``text`` as a PascalCase type name (``"qa_answer"`` -> ``"QaAnswer"``); ``"Value"`` when it has no letters or
    digits, and a ``V`` in front when it would start with a digit."""
    words = re.findall(r"[A-Za-z0-9]+", text)
    name = "".join(w[:1].upper() + w[1:] for w in words) or "Value"
    return name if not name[0].isdigit() else "V" + name


def _rust_field(name: str) -> tuple[str, str | None]:
    """(Rust identifier, serde rename or None) for a field name."""
    if name in _NOT_RAW:
        return f"{name}_", name
    if name in _RUST_KEYWORDS:
        return f"r#{name}", None
    return name, None


@dataclass
class _Named:
    """Named types collected while walking the IR, in definition order; identical definitions share a name."""

    defs: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    reserved: set[str] = field(default_factory=set)

    def name_for(self, spec: dict[str, Any], wanted: str) -> str:
        """A unique name for the type; models are identified by their class (``id``), others by their content."""
        key = spec.get("id") or json.dumps(spec, sort_keys=True, default=str)
        if key in self.keys:
            return self.keys[key]
        wanted = pascal_case(wanted)
        if wanted in _RUST_RESERVED_TYPES or wanted in self.reserved:
            wanted += "Type"
        name, n = wanted, 2
        while name in self.defs or name in self.reserved:
            name, n = f"{wanted}{n}", n + 1
        self.keys[key] = name
        self.defs[name] = spec
        return name

    def ref(self, spec: dict[str, Any]) -> str:
        """The name given to the model a ``ref`` points at (it is always inside that model's definition)."""
        return str(self.keys.get(spec.get("id") or "", spec["name"]))


# -- Rust --------------------------------------------------------------------------------------------------------


class _Rust:
    def __init__(self, derive_dspyo3: bool) -> None:
        self.named = _Named()
        self.items: list[str] = []
        self.derive_dspyo3 = derive_dspyo3
        self.emitted: set[str] = set()

    def derives(self) -> str:
        extra = ", dspyo3::DspyType" if self.derive_dspyo3 else ""
        return f"#[derive(Debug, Clone, PartialEq, Serialize, Deserialize{extra})]"

    def ty(self, spec: dict[str, Any], field: str, hint: str, heap: bool = False) -> str:
        """The Rust type; ``heap``: directly inside a Vec or map, where a recursive model needs no Box."""
        kind = spec["kind"]
        simple = {"str": "String", "int": "i64", "float": "f64", "bool": "bool", "any": "serde_json::Value",
                  "datetime": "String", "date": "String", "time": "String"}
        if kind in simple:
            return simple[kind]
        if kind == "list":
            return f"Vec<{self.ty(spec['item'], field, hint, heap=True)}>"
        if kind == "tuple":
            return "(" + ", ".join(self.ty(item, field, hint) for item in spec["items"]) + ",)"
        if kind == "optional":
            return f"Option<{self.ty(spec['inner'], field, hint)}>"
        if kind == "dict":
            return f"std::collections::HashMap<String, {self.ty(spec['value'], field, hint, heap=True)}>"
        if kind == "literal":
            if not all(isinstance(v, str) for v in spec["values"]):
                raise UnsupportedTypeError(field, f"Literal{spec['values']}", "Rust enums need string Literal values")
            return self.enum(spec["values"], [], pascal_case(hint), None)
        if kind == "enum":
            values = [m["value"] for m in spec["members"]]
            if not all(isinstance(v, str) for v in values):
                raise UnsupportedTypeError(field, spec["name"], "Rust enums need Enum members with string values")
            return self.enum(values, [m["name"] for m in spec["members"]], spec["name"], spec.get("doc"))
        if kind == "model":
            return self.model(spec, field)
        if kind == "ref":
            name = self.named.ref(spec)
            return name if heap else f"Box<{name}>"  # a model inside itself needs indirection
        raise UnsupportedTypeError(field, kind, "unknown IR kind")

    def enum(self, values: list[str], member_names: list[str], wanted: str, doc: str | None) -> str:
        name = self.named.name_for({"enum": values}, wanted)
        if name in self.emitted:
            return name
        self.emitted.add(name)
        variants, used = [], set()
        for i, value in enumerate(values):
            base = pascal_case(member_names[i].lower() if member_names else value)
            if base == "Self":
                base = "SelfValue"
            variant, n = base, 2
            while variant in used:
                variant, n = f"{base}{n}", n + 1
            used.add(variant)
            variants.append(f"    #[serde(rename = {_rust_str(value)})]\n    {variant},")
        lines = [*_doc(doc, ""), self.derives(), f"pub enum {name} {{", *variants, "}"]
        self.items.append("\n".join(lines))
        return name

    def model(self, spec: dict[str, Any], field: str) -> str:
        name = self.named.name_for(spec, spec["name"])
        if name in self.emitted:
            return name
        self.emitted.add(name)  # before the fields: a model that contains itself refers to this name
        used: set[str] = set()
        body = [self.field_line(f["name"], f["ty"], f.get("desc"), f"{field}.{f['name']}", f"{name}_{f['name']}",
                                default=f.get("default", _NO_DEFAULT), used=used) for f in spec["fields"]]
        self.items.append("\n".join([*_doc(spec.get("doc"), ""), self.derives(), f"pub struct {name} {{", *body, "}"]))
        return name

    def field_line(self, name: str, spec: dict[str, Any], desc: str | None, where: str, hint: str,
                   default: Any = None, used: set[str] | None = None) -> str:
        ident, rename = _rust_field(name)
        if used is not None:
            base, n = ident, 2
            while ident in used:
                ident, rename, n = f"{base}_{n}", name, n + 1
            used.add(ident)
        rust_ty = self.ty(spec, where, hint)
        attrs = []
        serde = []
        if rename:
            serde.append(f"rename = {_rust_str(rename)}")
        if spec["kind"] == "optional":
            serde.append("default")  # written as null when None: the Python side may have another default
        elif spec["kind"] == "any":
            serde.append("default")  # a JSON null may be left out by the Python side: Value::Null
        elif default is not _NO_DEFAULT and default is not None and _is_rust_default(spec, default):
            serde.append("default")  # Python's default is what Default::default() gives in Rust
        if serde:
            attrs.append(f"    #[serde({', '.join(serde)})]")
        if spec["kind"] in {"datetime", "date", "time"}:
            desc = (desc + " " if desc else "") + f"(ISO 8601 {spec['kind']})"
        return "\n".join(_doc(desc, "    ") + attrs + [f"    pub {ident}: {rust_ty},"])

    def signature(self, ir: dict[str, Any]) -> None:
        name = pascal_case(ir["name"])
        if self.derive_dspyo3:
            fields = []
            used: set[str] = set()
            for role, marker in (("inputs", "#[input]"), ("outputs", "#[output]")):
                for f in ir[role]:
                    line = self.field_line(f["name"], f["ty"], f.get("desc"), f["name"], f"{name}_{f['name']}",
                                           default=f.get("default", _NO_DEFAULT), used=used)
                    fields.append(line.replace("    pub ", f"    {marker}\n    pub ", 1))
            lines = [*_doc(ir.get("instructions"), ""), "#[derive(dspyo3::Signature)]", f"pub struct {name} {{"]
            self.items.append("\n".join([*lines, *fields, "}"]))
            return
        for role, suffix in (("inputs", "Input"), ("outputs", "Output")):
            used = set()
            fields = [self.field_line(f["name"], f["ty"], f.get("desc"), f["name"], f"{name}_{f['name']}",
                                      default=f.get("default", _NO_DEFAULT), used=used) for f in ir[role]]
            doc = f"{'Inputs' if role == 'inputs' else 'Outputs'} of `{ir['name']}`."
            if ir.get("instructions"):
                doc += f"\n\n{ir['instructions']}"
            lines = [*_doc(doc, ""), self.derives(), f"pub struct {name}{suffix} {{"]
            self.items.append("\n".join([*lines, *fields, "}"]))


_NO_DEFAULT = object()


def _rust_str(value: str) -> str:
    """A Rust string literal (non-ASCII kept as is; quotes, backslashes and control characters escaped)."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _is_rust_default(spec: dict[str, Any], value: Any) -> bool:
    """Whether ``value`` (a JSON default) equals what ``Default::default()`` gives for the Rust type."""
    zero = {"str": "", "int": 0, "float": 0.0, "bool": False, "list": [], "dict": {}}
    return spec["kind"] in zero and value == zero[spec["kind"]] and type(value) is type(zero[spec["kind"]])


def _doc(text: str | None, indent: str) -> list[str]:
    """Doc comment lines (leading indentation dropped: four spaces would make rustdoc run it as a doctest)."""
    if not text:
        return []
    return [f"{indent}///{' ' + line.strip() if line.strip() else ''}" for line in str(text).strip().splitlines()]


def _unique_signatures(signatures: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Signatures with distinct names (a second, different signature of the same name gets a number)."""
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for ir in signatures:
        if ir in out:
            continue
        base = name = pascal_case(ir["name"])
        n = 2
        while name in names:
            name, n = f"{base}{n}", n + 1
        names.add(name)
        out.append({**ir, "name": name})
    return out


def rust_source(signatures: Iterable[dict[str, Any]], *, source: str = "", derive_dspyo3: bool = False) -> str:
    """Rust code for the signatures (``derive_dspyo3``: a ``#[derive(dspyo3::Signature)]`` struct per signature
    and ``dspyo3::DspyType`` on nested types, for use with the dspyo3 crate)."""
    gen = _Rust(derive_dspyo3)
    signatures = _unique_signatures(signatures)
    for ir in signatures:
        gen.named.reserved.update({ir["name"], f"{ir['name']}Input", f"{ir['name']}Output"})
    for ir in signatures:
        gen.signature(ir)
    head = f"// Generated by `dspyo3 types codegen{' ' + source if source else ''} --lang rust`; do not edit.\n"
    return head + "use serde::{Deserialize, Serialize};\n\n" + "\n\n".join(gen.items) + "\n"


# -- Pydantic ----------------------------------------------------------------------------------------------------


class _Py:
    """Pydantic source. Everything it needs is imported under ``_``-prefixed names (``_t``, ``_pd``, ``_dt``,
    ``_enum``), so fields called ``datetime``, ``Field`` or ``Optional`` cannot shadow them."""

    def __init__(self) -> None:
        self.named = _Named()
        self.items: list[str] = []
        self.emitted: set[str] = set()

    def ty(self, spec: dict[str, Any], field: str, hint: str) -> str:
        kind = spec["kind"]
        simple = {"str": "str", "int": "int", "float": "float", "bool": "bool", "any": "_t.Any",
                  "datetime": "_dt.datetime", "date": "_dt.date", "time": "_dt.time"}
        if kind in simple:
            return simple[kind]
        if kind == "list":
            return f"list[{self.ty(spec['item'], field, hint)}]"
        if kind == "tuple":
            return "tuple[" + ", ".join(self.ty(item, field, hint) for item in spec["items"]) + "]"
        if kind == "optional":
            return f"_t.Optional[{self.ty(spec['inner'], field, hint)}]"
        if kind == "dict":
            return f"dict[str, {self.ty(spec['value'], field, hint)}]"
        if kind == "literal":
            return "_t.Literal[" + ", ".join(repr(v) for v in spec["values"]) + "]"
        if kind == "enum":
            name = self.named.name_for({**spec, "id": f"enum:{spec['name']}:{spec['members']}"}, spec["name"])
            if name not in self.emitted:
                self.emitted.add(name)
                values = [m["value"] for m in spec["members"]]
                base = "str, _enum.Enum" if all(isinstance(v, str) for v in values) else "_enum.Enum"
                members = [f"    {m['name']} = {m['value']!r}" for m in spec["members"]]
                self.items.append("\n".join([f"class {name}({base}):", *_pydoc(spec.get("doc")), *members]))
            return name
        if kind == "model":
            return self.model(spec, field)
        if kind == "ref":
            return self.named.ref(spec)
        raise UnsupportedTypeError(field, kind, "unknown IR kind")

    def model(self, spec: dict[str, Any], field: str) -> str:
        name = self.named.name_for(spec, spec["name"])
        if name in self.emitted:
            return name
        self.emitted.add(name)
        lines = [self.field_line(f["name"], f["ty"], f.get("desc"), f"{field}.{f['name']}", f"{name}_{f['name']}",
                                 f.get("default", _NO_DEFAULT)) for f in spec["fields"]]
        self.items.append("\n".join([f"class {name}(_pd.BaseModel):", *_pydoc(spec.get("doc")),
                                     *(lines or ["    pass"])]))
        return name

    def field_line(self, name: str, spec: dict[str, Any], desc: str | None, where: str, hint: str,
                   default: Any = _NO_DEFAULT) -> str:
        py_ty = self.ty(spec, where, hint)
        if default is not _NO_DEFAULT:
            value = repr(default)
        elif spec["kind"] == "optional":
            value = "None"
        else:
            value = "..."
        if keyword.iskeyword(name):
            raise UnsupportedTypeError(where, name, "a Python keyword cannot be a Pydantic field name")
        if desc:
            return f"    {name}: {py_ty} = _pd.Field({value}, description={desc!r})"
        return f"    {name}: {py_ty}" + ("" if value == "..." else f" = {value}")

    def signature(self, ir: dict[str, Any]) -> None:
        name = pascal_case(ir["name"])
        for role, suffix in (("inputs", "Input"), ("outputs", "Output")):
            lines = [self.field_line(f["name"], f["ty"], f.get("desc"), f["name"], f"{name}_{f['name']}",
                                     f.get("default", _NO_DEFAULT)) for f in ir[role]]
            doc = f"{'Inputs' if role == 'inputs' else 'Outputs'} of {ir['name']}."
            if ir.get("instructions"):
                doc += f"\n\n{ir['instructions']}"
            self.items.append("\n".join([f"class {name}{suffix}(_pd.BaseModel):", *_pydoc(doc),
                                         *(lines or ["    pass"])]))


def _pydoc(text: str | None) -> list[str]:
    """A docstring statement: ``repr`` gives a literal that is valid whatever the text holds."""
    if not text:
        return []
    return [f"    __doc__ = {str(text).strip()!r}", ""]


def pydantic_source(signatures: Iterable[dict[str, Any]], *, source: str = "") -> str:
    """Python source defining Pydantic models ``XInput`` / ``XOutput`` (and nested types) for the signatures."""
    gen = _Py()
    signatures = _unique_signatures(signatures)
    for ir in signatures:
        gen.named.reserved.update({f"{ir['name']}Input", f"{ir['name']}Output"})
    for ir in signatures:
        gen.signature(ir)
    rebuild = [f"{item.split('(')[0].removeprefix('class ')}.model_rebuild()" for item in gen.items
               if "(_pd.BaseModel)" in item.splitlines()[0]]
    head = [f'"""Generated by `dspyo3 types codegen{" " + source if source else ""} --lang pydantic`; do not edit."""',
            "", "from __future__ import annotations", "",
            "import datetime as _dt", "import enum as _enum", "import typing as _t", "", "import pydantic as _pd", ""]
    return "\n".join(head) + "\n\n" + "\n\n\n".join(gen.items) + "\n\n\n" + "\n".join(rebuild) + "\n"


def load_pydantic(signatures: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Execute :func:`pydantic_source` and return its namespace (``ns["XInput"]`` ...)."""
    namespace: dict[str, Any] = {"__name__": "dspyo3_types_generated"}
    exec(compile(pydantic_source(signatures), "<dspyo3 generated>", "exec"), namespace)
    return namespace


def jsonschema_document(signatures: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``{"XInput": schema, "XOutput": schema, ...}``: the JSON Schema (draft 2020-12) of each generated model."""
    sigs = _unique_signatures(signatures)
    namespace = load_pydantic(sigs)
    document: dict[str, Any] = {}
    for ir in sigs:
        name = pascal_case(ir["name"])
        for suffix in ("Input", "Output"):
            document[f"{name}{suffix}"] = namespace[f"{name}{suffix}"].model_json_schema()
    return document


def generate(signatures: list[dict[str, Any]], lang: str, *, source: str = "", derive_dspyo3: bool = False) -> str:
    """Code for ``lang`` (one of :data:`LANGUAGES`)."""
    if lang == "rust":
        return rust_source(signatures, source=source, derive_dspyo3=derive_dspyo3)
    if lang == "pydantic":
        return pydantic_source(signatures, source=source)
    if lang == "jsonschema":
        return json.dumps(jsonschema_document(signatures), indent=2) + "\n"
    raise ValueError(f"unknown language {lang!r}; choose one of {', '.join(LANGUAGES)}")
