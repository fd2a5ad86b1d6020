//! Signature and field-type descriptions that cross to Python, and the traits the derive macros implement.

use std::collections::{BTreeMap, HashMap};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The DSPy annotation of a field, built on the Python side into a real type (`str`, `list[int]`,
/// `Optional[...]`, `Literal[...]`, a Pydantic model, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TypeSpec {
    /// `str`.
    Str,
    /// `int`.
    Int,
    /// `float`.
    Float,
    /// `bool`.
    Bool,
    /// `typing.Any` (a free-form JSON value).
    Any,
    /// `list[item]`.
    List {
        /// Element type.
        item: Box<TypeSpec>,
    },
    /// `tuple[items...]` (a JSON array of fixed length).
    Tuple {
        /// Element types, in order.
        items: Vec<TypeSpec>,
    },
    /// `Optional[inner]`; as a model field it defaults to `None`, like a missing `Option` in serde.
    Optional {
        /// The wrapped type.
        inner: Box<TypeSpec>,
    },
    /// `dict[str, value]`.
    Dict {
        /// Value type (keys are strings, as in JSON).
        value: Box<TypeSpec>,
    },
    /// `Literal[values...]`, from a unit-only enum.
    Literal {
        /// Rust type name (documentation only).
        name: String,
        /// The allowed strings, as serde writes the variants.
        values: Vec<String>,
    },
    /// A type that contains itself (`struct Tree { children: Vec<Tree> }`): refused when a module is built.
    Recursive {
        /// Rust type name.
        name: String,
    },
    /// A Pydantic model, from a struct deriving [`DspyType`].
    Model {
        /// Model class name.
        name: String,
        /// Docstring.
        doc: Option<String>,
        /// Fields, in declaration order.
        fields: Vec<ModelField>,
    },
}

/// One field of a [`TypeSpec::Model`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelField {
    /// Field name as serde writes it.
    pub name: String,
    /// Description (Pydantic `Field(description=...)`).
    pub desc: Option<String>,
    /// Field type.
    pub ty: TypeSpec,
    /// Whether a value must be present (`false` for `#[serde(default)]` fields).
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

/// One input or output field of a signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldSpec {
    /// Field name (a Python identifier; the Rust field name).
    pub name: String,
    /// `desc=` of `dspy.InputField` / `dspy.OutputField`.
    pub desc: Option<String>,
    /// `prefix=` of the field, when set.
    pub prefix: Option<String>,
    /// Field type.
    pub ty: TypeSpec,
}

/// A whole DSPy signature: name, instructions (the struct's doc comment) and fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignatureSpec {
    /// Signature class name.
    pub name: String,
    /// Instructions; DSPy writes its default ("Given the fields ...") when `None`.
    pub instructions: Option<String>,
    /// Input fields, in order.
    pub inputs: Vec<FieldSpec>,
    /// Output fields, in order.
    pub outputs: Vec<FieldSpec>,
}

impl TypeSpec {
    /// JSON Schema of the type (what DSPy shows an LM for tool arguments).
    pub fn json_schema(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            TypeSpec::Str => json!({"type": "string"}),
            TypeSpec::Int => json!({"type": "integer"}),
            TypeSpec::Float => json!({"type": "number"}),
            TypeSpec::Bool => json!({"type": "boolean"}),
            TypeSpec::Any => json!({}),
            TypeSpec::List { item } => json!({"type": "array", "items": item.json_schema()}),
            TypeSpec::Tuple { items } => json!({
                "type": "array",
                "prefixItems": items.iter().map(TypeSpec::json_schema).collect::<Vec<_>>(),
                "minItems": items.len(),
                "maxItems": items.len(),
            }),
            TypeSpec::Optional { inner } => json!({"anyOf": [inner.json_schema(), {"type": "null"}]}),
            TypeSpec::Dict { value } => json!({"type": "object", "additionalProperties": value.json_schema()}),
            TypeSpec::Literal { values, .. } => json!({"type": "string", "enum": values}),
            TypeSpec::Recursive { name } => json!({"$ref": format!("#/$defs/{name}")}),
            TypeSpec::Model { name, doc, fields } => {
                let mut properties = serde_json::Map::new();
                let mut required = Vec::new();
                for field in fields {
                    let mut schema = field.ty.json_schema();
                    if let (Some(desc), Some(obj)) = (&field.desc, schema.as_object_mut()) {
                        obj.insert("description".into(), json!(desc));
                    }
                    if field.required && !matches!(field.ty, TypeSpec::Optional { .. }) {
                        required.push(field.name.clone());
                    }
                    properties.insert(field.name.clone(), schema);
                }
                let mut schema = json!({"type": "object", "title": name, "properties": properties, "required": required});
                if let Some(doc) = doc {
                    schema["description"] = json!(doc);
                }
                schema
            }
        }
    }
}

/// A Rust type usable as a signature field: it knows its DSPy annotation.
///
/// Implemented for `String`, the integer and float types, `bool`, `Vec<T>`, `Option<T>`, `HashMap<String, T>`,
/// `BTreeMap<String, T>` and `serde_json::Value`; derive it for your own structs (Pydantic models) and unit-only
/// enums (`Literal`s) with `#[derive(DspyType)]`.
pub trait DspyType {
    /// The annotation this type stands for.
    fn type_spec() -> TypeSpec;
}

/// A DSPy signature described in Rust; implement it with `#[derive(Signature)]`.
///
/// The derive generates `<Name>Input` and `<Name>Output` structs, which typed modules take and return.
pub trait Signature: 'static {
    /// The input fields, as one serde struct.
    type Input: Serialize + Send + Sync + 'static;
    /// The output fields, as one serde struct.
    type Output: DeserializeOwned + Send + 'static;
    /// The signature description sent to Python.
    fn spec() -> SignatureSpec;
}

macro_rules! leaf {
    ($spec:expr => $($t:ty),+) => { $(impl DspyType for $t { fn type_spec() -> TypeSpec { $spec } })+ };
}
leaf!(TypeSpec::Str => String, str, char);
leaf!(TypeSpec::Int => i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);
leaf!(TypeSpec::Float => f32, f64);
leaf!(TypeSpec::Bool => bool);
leaf!(TypeSpec::Any => serde_json::Value);

impl<T: DspyType> DspyType for Vec<T> {
    fn type_spec() -> TypeSpec {
        TypeSpec::List { item: Box::new(T::type_spec()) }
    }
}

macro_rules! tuple_type {
    ($($name:ident),+) => {
        impl<$($name: DspyType),+> DspyType for ($($name,)+) {
            fn type_spec() -> TypeSpec {
                TypeSpec::Tuple { items: vec![$($name::type_spec()),+] }
            }
        }
    };
}
tuple_type!(A);
tuple_type!(A, B);
tuple_type!(A, B, C);
tuple_type!(A, B, C, D);
tuple_type!(A, B, C, D, E);
tuple_type!(A, B, C, D, E, F);
tuple_type!(A, B, C, D, E, F, G);
tuple_type!(A, B, C, D, E, F, G, H);

impl<T: DspyType> DspyType for Option<T> {
    fn type_spec() -> TypeSpec {
        TypeSpec::Optional { inner: Box::new(T::type_spec()) }
    }
}

impl<T: DspyType, S> DspyType for HashMap<String, T, S> {
    fn type_spec() -> TypeSpec {
        TypeSpec::Dict { value: Box::new(T::type_spec()) }
    }
}

impl<T: DspyType> DspyType for BTreeMap<String, T> {
    fn type_spec() -> TypeSpec {
        TypeSpec::Dict { value: Box::new(T::type_spec()) }
    }
}

impl<T: DspyType + ?Sized> DspyType for Box<T> {
    fn type_spec() -> TypeSpec {
        T::type_spec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_nest() {
        let spec = <Option<Vec<HashMap<String, i64>>>>::type_spec();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["kind"], "optional");
        assert_eq!(json["inner"]["kind"], "list");
        assert_eq!(json["inner"]["item"]["value"]["kind"], "int");
    }

    #[test]
    fn json_schema_of_a_model_marks_optional_fields_not_required() {
        let spec = TypeSpec::Model {
            name: "Args".into(),
            doc: None,
            fields: vec![
                ModelField { name: "city".into(), desc: Some("a city".into()), ty: TypeSpec::Str, required: true },
                ModelField { name: "days".into(), desc: None, ty: <Option<u32>>::type_spec(), required: true },
                ModelField { name: "unit".into(), desc: None, ty: TypeSpec::Str, required: false },
            ],
        };
        let schema = spec.json_schema();
        assert_eq!(schema["required"], serde_json::json!(["city"]));
        assert_eq!(schema["properties"]["city"]["description"], "a city");
    }
}

/// Recursion guard for derived [`DspyType`] impls (used by the derive macro; not public API).
#[doc(hidden)]
pub struct TypeGuard(&'static str);

thread_local! {
    static TYPES_IN_PROGRESS: std::cell::RefCell<Vec<&'static str>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl TypeGuard {
    /// `None` when `name`'s spec is already being built on this thread (the type contains itself).
    pub fn enter(name: &'static str) -> Option<TypeGuard> {
        TYPES_IN_PROGRESS.with(|stack| {
            let mut stack = stack.borrow_mut();
            if stack.contains(&name) {
                None
            } else {
                stack.push(name);
                Some(TypeGuard(name))
            }
        })
    }
}

impl Drop for TypeGuard {
    fn drop(&mut self) {
        TYPES_IN_PROGRESS.with(|stack| {
            let mut stack = stack.borrow_mut();
            if let Some(pos) = stack.iter().rposition(|n| *n == self.0) {
                stack.remove(pos);
            }
        });
    }
}
