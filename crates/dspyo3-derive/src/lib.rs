//! Derive macros for the [`dspyo3`](https://docs.rs/dspyo3) crate.
//!
//! * `#[derive(Signature)]` turns a struct whose fields are marked `#[input]` or `#[output]` into a DSPy
//!   signature: the struct's doc comment becomes the instructions, each field's doc comment (or `desc = "..."`)
//!   its description. It also generates `<Name>Input` and `<Name>Output` structs (serde-serializable) that
//!   typed modules take and return.
//! * `#[derive(DspyType)]` makes a struct usable as a nested field type (a Pydantic model on the Python side)
//!   and a unit-only enum usable as a `Literal[...]`. Serde's `rename` / `rename_all` are honoured, so the names
//!   DSPy sees are the names serde writes.
//!
//! Use them through the `dspyo3` crate (`use dspyo3::{Signature, DspyType};`), which re-exports both.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::{
    parse_macro_input, spanned::Spanned, Attribute, Data, DeriveInput, Error, Fields, LitStr, Result, Token,
};

/// Derive `dspyo3::Signature` (see the crate docs).
///
/// ```ignore
/// /// Answer questions with short factoid answers.
/// #[derive(dspyo3::Signature)]
/// struct QA {
///     #[input]
///     question: String,
///     /// often between 1 and 5 words
///     #[output]
///     answer: String,
/// }
/// ```
#[proc_macro_derive(Signature, attributes(input, output, serde))]
pub fn derive_signature(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand_signature(&input).unwrap_or_else(Error::into_compile_error).into()
}

/// Derive `dspyo3::DspyType` for a struct (a Pydantic model) or a unit-only enum (a `Literal`).
#[proc_macro_derive(DspyType, attributes(dspy))]
pub fn derive_dspy_type(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand_dspy_type(&input).unwrap_or_else(Error::into_compile_error).into()
}

// ---------------------------------------------------------------------------------------------------------
// shared helpers

/// The text of `///` doc comments, lines trimmed and joined with newlines (`None` when there are none).
fn doc_text(attrs: &[Attribute]) -> Option<String> {
    let mut lines = Vec::new();
    for attr in attrs {
        if !attr.path().is_ident("doc") {
            continue;
        }
        if let syn::Meta::NameValue(nv) = &attr.meta {
            if let syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) = &nv.value {
                let line = s.value();
                let line = line.strip_prefix(' ').unwrap_or(&line);
                lines.push(line.trim_end().to_string());
            }
        }
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    while lines.first().is_some_and(|l| l.is_empty()) {
        lines.remove(0);
    }
    if lines.is_empty() {
        None
    } else {
        Some(lines.join("\n"))
    }
}

fn opt_tokens(value: &Option<String>) -> TokenStream2 {
    match value {
        Some(v) => quote!(::core::option::Option::Some(::std::string::String::from(#v))),
        None => quote!(::core::option::Option::None),
    }
}

/// Skip the value of a nested meta item we do not interpret (`key = expr`, `key(...)` or a bare path).
fn skip_meta(meta: &syn::meta::ParseNestedMeta<'_>) -> Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<TokenStream2>()?;
    }
    Ok(())
}

#[derive(Default)]
struct SerdeNames {
    rename: Option<String>,
    rename_all: Option<(String, Span)>,
    /// `skip` / `skip_serializing` / `skip_deserializing`
    skip: bool,
    default: bool,
    flatten: bool,
    alias: bool,
}

/// Read `#[serde(rename = "..", rename_all = "..")]` from attributes; every other serde option is ignored.
fn serde_names(attrs: &[Attribute]) -> Result<SerdeNames> {
    let mut out = SerdeNames::default();
    for attr in attrs {
        if !attr.path().is_ident("serde") {
            continue;
        }
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                if meta.input.peek(Token![=]) {
                    out.rename = Some(meta.value()?.parse::<LitStr>()?.value());
                } else {
                    // rename(serialize = "..", deserialize = "..") - take the serialize name
                    meta.parse_nested_meta(|inner| {
                        if inner.path.is_ident("serialize") {
                            out.rename = Some(inner.value()?.parse::<LitStr>()?.value());
                        } else {
                            skip_meta(&inner)?;
                        }
                        Ok(())
                    })?;
                }
            } else if meta.path.is_ident("rename_all") {
                if meta.input.peek(Token![=]) {
                    let lit = meta.value()?.parse::<LitStr>()?;
                    out.rename_all = Some((lit.value(), lit.span()));
                } else {
                    meta.parse_nested_meta(|inner| {
                        if inner.path.is_ident("serialize") {
                            let lit = inner.value()?.parse::<LitStr>()?;
                            out.rename_all = Some((lit.value(), lit.span()));
                        } else {
                            skip_meta(&inner)?;
                        }
                        Ok(())
                    })?;
                }
            } else {
                if meta.path.is_ident("skip") || meta.path.is_ident("skip_serializing") || meta.path.is_ident("skip_deserializing") {
                    out.skip = true;
                } else if meta.path.is_ident("default") {
                    out.default = true;
                } else if meta.path.is_ident("flatten") {
                    out.flatten = true;
                } else if meta.path.is_ident("alias") {
                    out.alias = true;
                }
                skip_meta(&meta)?;
            }
            Ok(())
        })?;
    }
    Ok(out)
}

fn pascal_from_snake(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut upper_next = true;
    for ch in field.chars() {
        if ch == '_' {
            upper_next = true;
        } else if upper_next {
            out.push(ch.to_ascii_uppercase());
            upper_next = false;
        } else {
            out.push(ch);
        }
    }
    out
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// `PascalCase` variant name to `snake_case`, the way serde does it (an underscore before every capital).
fn snake_from_pascal(variant: &str) -> String {
    let mut out = String::with_capacity(variant.len() + 4);
    for (i, ch) in variant.char_indices() {
        if i > 0 && ch.is_uppercase() {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

/// Apply a serde `rename_all` rule exactly as serde does, to a field (`is_variant = false`) or a variant.
fn apply_rename_all(rule: &str, ident: &str, is_variant: bool, span: Span) -> Result<String> {
    let renamed = match (rule, is_variant) {
        ("lowercase", true) => ident.to_ascii_lowercase(),
        ("lowercase" | "snake_case", false) => ident.to_string(),
        ("UPPERCASE", _) => ident.to_ascii_uppercase(),
        ("PascalCase", true) => ident.to_string(),
        ("PascalCase", false) => pascal_from_snake(ident),
        ("camelCase", true) => lower_first(ident),
        ("camelCase", false) => lower_first(&pascal_from_snake(ident)),
        ("snake_case", true) => snake_from_pascal(ident),
        ("SCREAMING_SNAKE_CASE", true) => snake_from_pascal(ident).to_ascii_uppercase(),
        ("SCREAMING_SNAKE_CASE", false) => ident.to_ascii_uppercase(),
        ("kebab-case", true) => snake_from_pascal(ident).replace('_', "-"),
        ("kebab-case", false) => ident.replace('_', "-"),
        ("SCREAMING-KEBAB-CASE", true) => snake_from_pascal(ident).to_ascii_uppercase().replace('_', "-"),
        ("SCREAMING-KEBAB-CASE", false) => ident.to_ascii_uppercase().replace('_', "-"),
        (other, _) => {
            return Err(Error::new(
                span,
                format!(
                    "unsupported serde rename_all rule {other:?}; use lowercase, UPPERCASE, PascalCase, camelCase, \
                     snake_case, SCREAMING_SNAKE_CASE, kebab-case or SCREAMING-KEBAB-CASE"
                ),
            ))
        }
    };
    Ok(renamed)
}

fn unraw(ident: &syn::Ident) -> String {
    let s = ident.to_string();
    s.strip_prefix("r#").map(str::to_string).unwrap_or(s)
}

// ---------------------------------------------------------------------------------------------------------
// #[derive(Signature)]

enum Role {
    Input,
    Output,
}

struct SigField<'a> {
    field: &'a syn::Field,
    role: Role,
    desc: Option<String>,
    prefix: Option<String>,
    /// `#[serde(rename = "...")]`: the DSPy field name when the Rust one cannot be (`self`, `type`).
    rename: Option<String>,
}

fn parse_role(field: &syn::Field) -> Result<SigField<'_>> {
    let mut found: Option<(Role, Option<String>, Option<String>, Span)> = None;
    for attr in &field.attrs {
        let role = if attr.path().is_ident("input") {
            Role::Input
        } else if attr.path().is_ident("output") {
            Role::Output
        } else {
            continue;
        };
        if found.is_some() {
            return Err(Error::new(attr.span(), "a field is either #[input] or #[output], not both"));
        }
        let (mut desc, mut prefix) = (None, None);
        if matches!(attr.meta, syn::Meta::List(_)) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("desc") {
                    desc = Some(meta.value()?.parse::<LitStr>()?.value());
                } else if meta.path.is_ident("prefix") {
                    prefix = Some(meta.value()?.parse::<LitStr>()?.value());
                } else {
                    return Err(meta.error("expected `desc = \"...\"` or `prefix = \"...\"`"));
                }
                Ok(())
            })?;
        }
        found = Some((role, desc, prefix, attr.span()));
    }
    let name = field.ident.as_ref().map(unraw).unwrap_or_default();
    let serde = serde_names(&field.attrs)?;
    if serde.alias || serde.skip || serde.flatten {
        return Err(Error::new(
            field.span(),
            format!(
                "field `{name}`: every signature field is one DSPy field, so #[serde(alias/skip/flatten)] cannot \
                 be used on it"
            ),
        ));
    }
    let Some((role, desc, prefix, _)) = found else {
        return Err(Error::new(
            field.span(),
            format!("field `{name}` needs #[input] or #[output] (every field of a signature is one of the two)"),
        ));
    };
    let desc = desc.or_else(|| doc_text(&field.attrs));
    Ok(SigField { field, role, desc, prefix, rename: serde.rename })
}

/// Attributes carried over to the generated Input/Output structs: docs and serde options.
fn carried_attrs(attrs: &[Attribute]) -> Vec<&Attribute> {
    attrs.iter().filter(|a| a.path().is_ident("doc") || a.path().is_ident("serde")).collect()
}

fn expand_signature(input: &DeriveInput) -> Result<TokenStream2> {
    let name = &input.ident;
    if !input.generics.params.is_empty() {
        return Err(Error::new(input.generics.span(), "#[derive(Signature)] does not support generic structs"));
    }
    let Data::Struct(data) = &input.data else {
        return Err(Error::new(name.span(), "#[derive(Signature)] needs a struct with named fields"));
    };
    let Fields::Named(named) = &data.fields else {
        return Err(Error::new(name.span(), "#[derive(Signature)] needs a struct with named fields"));
    };
    let fields = named.named.iter().map(parse_role).collect::<Result<Vec<_>>>()?;
    if !fields.iter().any(|f| matches!(f.role, Role::Output)) {
        return Err(Error::new(name.span(), "a signature needs at least one #[output] field"));
    }
    let vis = &input.vis;
    let input_name = format_ident!("{}Input", name);
    let output_name = format_ident!("{}Output", name);
    let instructions = opt_tokens(&doc_text(&input.attrs));
    let sig_name = name.to_string();

    let mut input_fields = Vec::new();
    let mut output_fields = Vec::new();
    let mut input_specs = Vec::new();
    let mut output_specs = Vec::new();
    let mut input_moves = Vec::new();
    let mut output_moves = Vec::new();
    for f in &fields {
        let ident = f.field.ident.as_ref().expect("named field");
        let ty = &f.field.ty;
        let attrs = carried_attrs(&f.field.attrs);
        let field_name = f.rename.clone().unwrap_or_else(|| unraw(ident));
        let desc = opt_tokens(&f.desc);
        let prefix = opt_tokens(&f.prefix);
        let spec = quote! {
            ::dspyo3::FieldSpec {
                name: ::std::string::String::from(#field_name),
                desc: #desc,
                prefix: #prefix,
                ty: <#ty as ::dspyo3::DspyType>::type_spec(),
            }
        };
        let decl = quote! { #(#attrs)* pub #ident: #ty };
        match f.role {
            Role::Input => {
                input_moves.push(quote!(#ident: value.#ident));
                input_fields.push(decl);
                input_specs.push(spec);
            }
            Role::Output => {
                output_moves.push(quote!(#ident: value.#ident));
                output_fields.push(decl);
                output_specs.push(spec);
            }
        }
    }
    let input_doc = format!("Inputs of the [`{name}`] signature.");
    let output_doc = format!("Outputs of the [`{name}`] signature.");
    Ok(quote! {
        #[doc = #input_doc]
        #[derive(::core::fmt::Debug, ::core::clone::Clone,
                 ::dspyo3::__private::serde::Serialize, ::dspyo3::__private::serde::Deserialize)]
        #[serde(crate = "::dspyo3::__private::serde")]
        #vis struct #input_name { #(#input_fields,)* }

        #[doc = #output_doc]
        #[derive(::core::fmt::Debug, ::core::clone::Clone,
                 ::dspyo3::__private::serde::Serialize, ::dspyo3::__private::serde::Deserialize)]
        #[serde(crate = "::dspyo3::__private::serde")]
        #vis struct #output_name { #(#output_fields,)* }

        impl ::core::convert::From<#name> for (#input_name, #output_name) {
            /// Split a whole example into its inputs and outputs.
            fn from(value: #name) -> Self {
                (#input_name { #(#input_moves,)* }, #output_name { #(#output_moves,)* })
            }
        }

        impl ::dspyo3::Signature for #name {
            type Input = #input_name;
            type Output = #output_name;
            fn spec() -> ::dspyo3::SignatureSpec {
                ::dspyo3::SignatureSpec {
                    name: ::std::string::String::from(#sig_name),
                    instructions: #instructions,
                    inputs: ::std::vec![#(#input_specs),*],
                    outputs: ::std::vec![#(#output_specs),*],
                }
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------------------
// #[derive(DspyType)]

/// `#[dspy(desc = "...")]` on a field of a model struct.
fn dspy_desc(attrs: &[Attribute]) -> Result<Option<String>> {
    let mut desc = None;
    for attr in attrs {
        if attr.path().is_ident("dspy") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("desc") {
                    desc = Some(meta.value()?.parse::<LitStr>()?.value());
                    Ok(())
                } else {
                    Err(meta.error("expected `desc = \"...\"`"))
                }
            })?;
        }
    }
    Ok(desc)
}

fn expand_dspy_type(input: &DeriveInput) -> Result<TokenStream2> {
    let name = &input.ident;
    if !input.generics.params.is_empty() {
        return Err(Error::new(input.generics.span(), "#[derive(DspyType)] does not support generic types"));
    }
    let type_name = name.to_string();
    let doc = opt_tokens(&doc_text(&input.attrs));
    let container = serde_names(&input.attrs)?;
    let body = match &input.data {
        Data::Struct(data) => {
            let Fields::Named(named) = &data.fields else {
                return Err(Error::new(name.span(), "#[derive(DspyType)] on a struct needs named fields"));
            };
            let mut specs = Vec::new();
            for field in &named.named {
                let ident = field.ident.as_ref().expect("named field");
                let names = serde_names(&field.attrs)?;
                if names.skip {
                    continue; // serde never writes it, so DSPy never sees it
                }
                if names.flatten {
                    return Err(Error::new(
                        field.span(),
                        format!("field `{}`: #[serde(flatten)] is not supported by #[derive(DspyType)]", unraw(ident)),
                    ));
                }
                let required = !(names.default || container.default);
                let field_name = match (names.rename, &container.rename_all) {
                    (Some(rename), _) => rename,
                    (None, Some((rule, span))) => apply_rename_all(rule, &unraw(ident), false, *span)?,
                    (None, None) => unraw(ident),
                };
                let desc = opt_tokens(&dspy_desc(&field.attrs)?.or_else(|| doc_text(&field.attrs)));
                let ty = &field.ty;
                specs.push(quote! {
                    ::dspyo3::ModelField {
                        name: ::std::string::String::from(#field_name),
                        desc: #desc,
                        ty: <#ty as ::dspyo3::DspyType>::type_spec(),
                        required: #required,
                    }
                });
            }
            quote! {
                ::dspyo3::TypeSpec::Model {
                    name: ::std::string::String::from(#type_name),
                    doc: #doc,
                    fields: ::std::vec![#(#specs),*],
                }
            }
        }
        Data::Enum(data) => {
            let mut values = Vec::new();
            for variant in &data.variants {
                if !matches!(variant.fields, Fields::Unit) {
                    return Err(Error::new(
                        variant.span(),
                        format!(
                            "#[derive(DspyType)] maps enums to Literal[...], so every variant must be a unit \
                             variant; `{}` carries data (use a struct for structured outputs)",
                            variant.ident
                        ),
                    ));
                }
                let names = serde_names(&variant.attrs)?;
                let value = match (names.rename, &container.rename_all) {
                    (Some(rename), _) => rename,
                    (None, Some((rule, span))) => apply_rename_all(rule, &unraw(&variant.ident), true, *span)?,
                    (None, None) => unraw(&variant.ident),
                };
                values.push(value);
            }
            if values.is_empty() {
                return Err(Error::new(name.span(), "#[derive(DspyType)] needs an enum with at least one variant"));
            }
            quote! {
                ::dspyo3::TypeSpec::Literal {
                    name: ::std::string::String::from(#type_name),
                    values: ::std::vec![#(::std::string::String::from(#values)),*],
                }
            }
        }
        Data::Union(_) => return Err(Error::new(name.span(), "#[derive(DspyType)] does not support unions")),
    };
    Ok(quote! {
        impl ::dspyo3::DspyType for #name {
            fn type_spec() -> ::dspyo3::TypeSpec {
                // a type that contains itself would recurse forever: report it instead
                let ::core::option::Option::Some(_guard) =
                    ::dspyo3::__private::TypeGuard::enter(::core::any::type_name::<Self>())
                else {
                    return ::dspyo3::TypeSpec::Recursive { name: ::std::string::String::from(#type_name) };
                };
                #body
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_all_rules_match_serde() {
        let s = Span::call_site();
        assert_eq!(apply_rename_all("snake_case", "VeryPositive", true, s).unwrap(), "very_positive");
        assert_eq!(apply_rename_all("kebab-case", "VeryPositive", true, s).unwrap(), "very-positive");
        assert_eq!(apply_rename_all("lowercase", "VeryPositive", true, s).unwrap(), "verypositive");
        assert_eq!(apply_rename_all("camelCase", "user_id", false, s).unwrap(), "userId");
        assert_eq!(apply_rename_all("PascalCase", "user_id", false, s).unwrap(), "UserId");
        assert_eq!(apply_rename_all("SCREAMING_SNAKE_CASE", "HttpServer", true, s).unwrap(), "HTTP_SERVER");
        assert!(apply_rename_all("Title Case", "x", true, s).is_err());
    }

    #[test]
    fn doc_lines_are_trimmed_and_joined() {
        let item: DeriveInput = syn::parse_quote! {
            /// Answer questions.
            ///
            /// Be brief.
            struct X { a: i64 }
        };
        assert_eq!(doc_text(&item.attrs).unwrap(), "Answer questions.\n\nBe brief.");
    }

    #[test]
    fn doc_indentation_is_kept() {
        let item: DeriveInput = syn::parse_quote! {
            /// Steps:
            ///   1. read
            struct X { a: i64 }
        };
        assert_eq!(doc_text(&item.attrs).unwrap(), "Steps:\n  1. read");
    }

    #[test]
    fn serde_rename_names_the_dspy_field_and_flatten_is_rejected() {
        let item: DeriveInput = syn::parse_quote! { struct X { #[input] #[serde(rename = "self")] self_: String, #[output] b: String } };
        let code = expand_signature(&item).unwrap().to_string();
        assert!(code.contains("String :: from (\"self\")"), "{code}");
        let item: DeriveInput = syn::parse_quote! { struct X { #[input] #[serde(flatten)] a: String, #[output] b: String } };
        let err = expand_signature(&item).unwrap_err().to_string();
        assert!(err.contains("field `a`") && err.contains("flatten"), "{err}");
    }

    #[test]
    fn flatten_is_rejected_and_skip_is_left_out() {
        let item: DeriveInput = syn::parse_quote! { struct M { #[serde(flatten)] a: Other } };
        assert!(expand_dspy_type(&item).unwrap_err().to_string().contains("flatten"));
        let item: DeriveInput = syn::parse_quote! { struct M { #[serde(skip)] a: i64, b: i64 } };
        let code = expand_dspy_type(&item).unwrap().to_string();
        assert!(!code.contains("\"a\"") && code.contains("\"b\""), "{code}");
    }

    #[test]
    fn unmarked_field_is_an_error_naming_it() {
        let item: DeriveInput = syn::parse_quote! { struct X { #[input] a: String, b: String } };
        let err = expand_signature(&item).unwrap_err().to_string();
        assert!(err.contains("field `b` needs #[input] or #[output]"), "{err}");
    }

    #[test]
    fn data_carrying_enum_is_rejected() {
        let item: DeriveInput = syn::parse_quote! { enum E { A, B(i64) } };
        let err = expand_dspy_type(&item).unwrap_err().to_string();
        assert!(err.contains("`B` carries data"), "{err}");
    }
}
