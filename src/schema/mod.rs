//! The internal JSON Schema, checked once and turned into typed target fields and an Arrow schema.
//!
//! | JSON Schema                         | Arrow                         |
//! |-------------------------------------|-------------------------------|
//! | `integer`                           | `Int64`                       |
//! | `number`                            | `Float64`                     |
//! | `string`                            | `Utf8`                        |
//! | `boolean`                           | `Boolean`                     |
//! | `string` + `format: date`           | `Date32`                      |
//! | `string` + `format: date-time`      | `Timestamp(µs, UTC)`          |
//! | `object` with `properties`          | `Struct`                      |
//! | `array` with `items`                | `List`                        |
//! | anything else (no type, mixed)      | `Utf8` holding JSON text      |

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The value type of a target field.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldKind {
    /// JSON `integer` → Int64.
    Integer,
    /// JSON `number` → Float64.
    Number,
    /// JSON `string` → Utf8.
    String,
    /// JSON `boolean` → Boolean.
    Boolean,
    /// `string` with `format: date` → Date32.
    Date,
    /// `string` with `format: date-time` → Timestamp(µs, UTC).
    DateTime,
    /// `object` with properties → Struct.
    Object(Vec<TargetField>),
    /// `array` with items → List.
    Array(Box<TargetField>),
    /// No single type: the value is kept as JSON text.
    Json,
}

impl FieldKind {
    /// The Arrow type of this kind.
    pub fn data_type(&self) -> DataType {
        match self {
            FieldKind::Integer => DataType::Int64,
            FieldKind::Number => DataType::Float64,
            FieldKind::String | FieldKind::Json => DataType::Utf8,
            FieldKind::Boolean => DataType::Boolean,
            FieldKind::Date => DataType::Date32,
            FieldKind::DateTime => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            FieldKind::Object(fields) => DataType::Struct(
                fields
                    .iter()
                    .map(|f| f.arrow_field(true))
                    .collect::<Vec<_>>()
                    .into(),
            ),
            FieldKind::Array(item) => {
                DataType::List(Arc::new(Field::new("item", item.kind.data_type(), true)))
            }
        }
    }

    /// The JSON Schema word for this kind, used in error messages.
    pub fn json_name(&self) -> &'static str {
        match self {
            FieldKind::Integer => "integer",
            FieldKind::Number => "number",
            FieldKind::String | FieldKind::Json => "string",
            FieldKind::Boolean => "boolean",
            FieldKind::Date => "date",
            FieldKind::DateTime => "date-time",
            FieldKind::Object(_) => "object",
            FieldKind::Array(_) => "array",
        }
    }
}

/// The vectorizable constraints of one field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Constraints {
    /// `minimum` (inclusive).
    pub minimum: Option<f64>,
    /// `maximum` (inclusive).
    pub maximum: Option<f64>,
    /// `exclusiveMinimum` (draft 2020-12 numeric form).
    pub exclusive_minimum: Option<f64>,
    /// `exclusiveMaximum` (draft 2020-12 numeric form).
    pub exclusive_maximum: Option<f64>,
    /// `multipleOf`.
    pub multiple_of: Option<f64>,
    /// `minLength`, in Unicode code points.
    pub min_length: Option<u64>,
    /// `maxLength`, in Unicode code points.
    pub max_length: Option<u64>,
    /// `pattern` (ECMA-262 as far as Rust's regex syntax agrees).
    pub pattern: Option<String>,
    /// `enum` values.
    pub enum_values: Option<Vec<Value>>,
    /// `const` value.
    pub const_value: Option<Value>,
    /// `format` (other than `date`/`date-time`, which pick the Arrow type).
    pub format: Option<String>,
}

/// One target field.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetField {
    /// Property name.
    pub name: String,
    /// Value type.
    pub kind: FieldKind,
    /// Listed in the parent's `required`.
    pub required: bool,
    /// `type` includes `"null"`.
    pub nullable: bool,
    /// `description`, shown to mappers.
    pub description: Option<String>,
    /// Vectorized checks.
    pub constraints: Constraints,
    /// The field's own subschema, for the per-row fallback and for mapper prompts.
    pub schema: Value,
    /// Whether the subschema has keywords the vectorized validator does not cover
    /// (`oneOf`, `anyOf`, `allOf`, `not`, `$ref`, `if`, nested object/array contents, …);
    /// such fields are also checked per row by the `jsonschema` crate.
    pub needs_fallback: bool,
}

impl TargetField {
    /// The Arrow field; required fields are non-nullable in valid output.
    pub fn arrow_field(&self, allow_null: bool) -> Field {
        Field::new(
            &self.name,
            self.kind.data_type(),
            allow_null || !self.required,
        )
    }
}

/// The compiled internal schema.
#[derive(Debug, Clone)]
pub struct TargetSchema {
    /// Top-level fields in schema order (= output column order).
    pub fields: Vec<TargetField>,
    /// The schema as written.
    pub raw: Value,
}

/// Keywords whose meaning the vectorized validator does not implement.
const FALLBACK_KEYWORDS: &[&str] = &[
    "oneOf",
    "anyOf",
    "allOf",
    "not",
    "$ref",
    "$dynamicRef",
    "if",
    "then",
    "else",
    "dependentSchemas",
    "dependentRequired",
    "patternProperties",
    "propertyNames",
    "contains",
    "uniqueItems",
    "minItems",
    "maxItems",
    "prefixItems",
    "minProperties",
    "maxProperties",
    "additionalProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
];

impl TargetSchema {
    /// Checks the schema against the JSON Schema meta-schema and builds the target fields.
    pub fn try_new(raw: &Value) -> Result<TargetSchema> {
        // Validation and the field walk recurse: bound the nesting first.
        let depth = crate::limits::value_depth(raw);
        if depth > crate::limits::MAX_SCHEMA_DEPTH {
            return Err(Error::Schema(format!(
                "nested {depth} levels deep; a schema may nest at most {} levels of JSON (about {} nested object fields)",
                crate::limits::MAX_SCHEMA_DEPTH,
                crate::limits::MAX_SCHEMA_DEPTH / 2
            )));
        }
        if let Err(e) = jsonschema::meta::validate(raw) {
            return Err(Error::Schema(format!(
                "not a valid JSON Schema: {e} (at `{}`)",
                e.instance_path()
            )));
        }
        let obj = raw
            .as_object()
            .ok_or_else(|| Error::Schema("must be a JSON object".into()))?;
        match obj.get("type") {
            Some(Value::String(t)) if t == "object" => {}
            None => {}
            Some(other) => {
                return Err(Error::Schema(format!(
                    "the top level must have `\"type\": \"object\"`, found {other}"
                )));
            }
        }
        let props = obj
            .get("properties")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::Schema("the top level needs `properties`".into()))?;
        let fields = object_fields(obj, props, "")?;
        if fields.is_empty() {
            return Err(Error::Schema("`properties` is empty".into()));
        }
        // After the field walk, whose messages name the property (a bad `pattern`, say).
        if let Err(e) = jsonschema::validator_for(raw) {
            return Err(Error::Schema(format!(
                "cannot be compiled: {e} (at `{}`)",
                e.instance_path()
            )));
        }
        Ok(TargetSchema {
            fields,
            raw: raw.clone(),
        })
    }

    /// The Arrow schema of mapped rows (every field nullable: invalid rows carry nulls).
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.fields
                .iter()
                .map(|f| f.arrow_field(true))
                .collect::<Vec<_>>(),
        ))
    }

    /// The Arrow schema of valid output: required fields are non-nullable.
    pub fn valid_arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.fields
                .iter()
                .map(|f| f.arrow_field(false))
                .collect::<Vec<_>>(),
        ))
    }

    /// The schema restricted to the named top-level fields (in schema order): what a check of
    /// a few fields needs, without planning all of a wide schema.
    pub fn only(&self, names: &[&str]) -> TargetSchema {
        let fields: Vec<TargetField> = self
            .fields
            .iter()
            .filter(|f| names.contains(&f.name.as_str()))
            .cloned()
            .collect();
        let mut raw = self.raw.clone();
        if let Some(props) = raw.get_mut("properties").and_then(Value::as_object_mut) {
            props.retain(|k, _| names.contains(&k.as_str()));
        }
        if let Some(req) = raw.get_mut("required").and_then(Value::as_array_mut) {
            req.retain(|v| v.as_str().is_some_and(|k| names.contains(&k)));
        }
        TargetSchema { fields, raw }
    }

    /// Looks a field up by name.
    pub fn field(&self, name: &str) -> Option<&TargetField> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Names of all fields, for "valid fields are …" messages.
    pub fn field_names(&self) -> Vec<&str> {
        self.fields.iter().map(|f| f.name.as_str()).collect()
    }
}

fn object_fields(
    obj: &Map<String, Value>,
    props: &Map<String, Value>,
    prefix: &str,
) -> Result<Vec<TargetField>> {
    let required: Vec<&str> = obj
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    props
        .iter()
        .map(|(name, sub)| {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            let mut f = target_field(name, sub, &path)?;
            f.required = required.contains(&name.as_str());
            Ok(f)
        })
        .collect()
}

fn target_field(name: &str, sub: &Value, path: &str) -> Result<TargetField> {
    let empty = Map::new();
    let o = match sub {
        Value::Object(o) => o,
        Value::Bool(true) => &empty,
        _ => {
            return Err(Error::Schema(format!(
                "property `{path}` must be a schema object"
            )));
        }
    };
    let (types, nullable) = match o.get("type") {
        None => (vec![], true),
        Some(Value::String(t)) => (vec![t.as_str()], t == "null"),
        Some(Value::Array(ts)) => {
            let all: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
            let nullable = all.contains(&"null");
            (all.into_iter().filter(|t| *t != "null").collect(), nullable)
        }
        Some(other) => {
            return Err(Error::Schema(format!(
                "property `{path}` has an invalid type {other}"
            )));
        }
    };
    let format = o.get("format").and_then(Value::as_str);
    let mut needs_fallback = FALLBACK_KEYWORDS.iter().any(|k| o.contains_key(*k));
    let kind = match types.as_slice() {
        ["integer"] => FieldKind::Integer,
        ["number"] => FieldKind::Number,
        ["boolean"] => FieldKind::Boolean,
        ["string"] if format == Some("date") => FieldKind::Date,
        ["string"] if format == Some("date-time") => FieldKind::DateTime,
        ["string"] => FieldKind::String,
        ["object"] => match o.get("properties").and_then(Value::as_object) {
            Some(props) if !props.is_empty() => {
                needs_fallback = true;
                FieldKind::Object(object_fields(o, props, path)?)
            }
            _ => {
                needs_fallback = true;
                FieldKind::Json
            }
        },
        ["array"] => match o.get("items") {
            Some(items @ Value::Object(_)) => {
                needs_fallback = true;
                let item = target_field("item", items, &format!("{path}[]"))?;
                FieldKind::Array(Box::new(item))
            }
            _ => {
                needs_fallback = true;
                FieldKind::Json
            }
        },
        [] if nullable && o.contains_key("type") => {
            return Err(Error::Schema(format!("property `{path}` only allows null")));
        }
        _ => {
            needs_fallback = true;
            FieldKind::Json
        }
    };
    let num = |k: &str| o.get(k).and_then(Value::as_f64);
    let uint = |k: &str| o.get(k).and_then(Value::as_u64);
    let constraints = Constraints {
        minimum: num("minimum"),
        maximum: num("maximum"),
        exclusive_minimum: num("exclusiveMinimum"),
        exclusive_maximum: num("exclusiveMaximum"),
        multiple_of: num("multipleOf"),
        min_length: uint("minLength"),
        max_length: uint("maxLength"),
        pattern: o.get("pattern").and_then(Value::as_str).map(str::to_string),
        enum_values: o.get("enum").and_then(Value::as_array).cloned(),
        const_value: o.get("const").cloned(),
        format: format
            .filter(|_| !matches!(kind, FieldKind::Date | FieldKind::DateTime))
            .map(str::to_string),
    };
    if let Some(p) = &constraints.pattern {
        regex::Regex::new(p).map_err(|e| {
            Error::Schema(format!(
                "property `{path}` has a pattern that does not compile: {e}"
            ))
        })?;
    }
    if let Some(f) = constraints
        .format
        .as_ref()
        .filter(|f| !crate::format::is_known(f))
    {
        // An unknown format is an annotation in draft 2020-12: keep it, check nothing.
        tracing::warn!(
            field = path,
            format = f.as_str(),
            "Unknown `format` is not checked."
        );
    }
    Ok(TargetField {
        name: name.to_string(),
        kind,
        required: false,
        nullable,
        description: o
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_string),
        constraints,
        schema: sub.clone(),
        needs_fallback,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arrow_types_follow_the_table() {
        let s = TargetSchema::try_new(&json!({
            "type": "object",
            "required": ["id"],
            "properties": {
                "id": {"type": "integer"},
                "x": {"type": ["number", "null"]},
                "s": {"type": "string"},
                "b": {"type": "boolean"},
                "d": {"type": "string", "format": "date"},
                "t": {"type": "string", "format": "date-time"},
                "o": {"type": "object", "properties": {"a": {"type": "integer"}}},
                "l": {"type": "array", "items": {"type": "string"}},
                "any": {}
            }
        }))
        .unwrap();
        let a = s.arrow_schema();
        let types: Vec<String> = a
            .fields()
            .iter()
            .map(|f| f.data_type().to_string())
            .collect();
        assert_eq!(types[0], "Int64");
        assert_eq!(types[1], "Float64");
        assert_eq!(types[2], "Utf8");
        assert_eq!(types[3], "Boolean");
        assert_eq!(types[4], "Date32");
        assert!(types[5].starts_with("Timestamp(µs"), "{}", types[5]);
        assert!(types[6].starts_with("Struct"), "{}", types[6]);
        assert!(types[7].starts_with("List"), "{}", types[7]);
        assert_eq!(types[8], "Utf8");
        assert!(s.fields[0].required && !s.fields[1].required);
        assert!(s.fields[1].nullable);
        assert!(!s.valid_arrow_schema().field(0).is_nullable());
        assert!(s.fields[6].needs_fallback && !s.fields[0].needs_fallback);
    }

    #[test]
    fn invalid_schema_is_rejected() {
        let e = TargetSchema::try_new(
            &json!({"type": "object", "properties": {"a": {"type": "integr"}}}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a valid JSON Schema"), "{e}");
        let e = TargetSchema::try_new(
            &json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "(("}}}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pattern"), "{e}");
    }
}
