//! The `storage` key: settings per object-store URL prefix, written as JSON strings, numbers
//! or booleans (`"allow_http": true`), all kept as [`Secret`]s because some are credentials.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::Secret;

type Storage = BTreeMap<String, BTreeMap<String, Secret>>;

/// Reads `{"s3://bucket": {"endpoint": "…", "allow_http": true}}`.
pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Storage, D::Error> {
    use serde::de::Error;
    let raw = BTreeMap::<String, BTreeMap<String, Value>>::deserialize(d)?;
    let mut out = Storage::new();
    for (prefix, settings) in raw {
        let mut kept = BTreeMap::new();
        for (key, value) in settings {
            let text = match value {
                Value::String(s) => s,
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                _ => {
                    return Err(D::Error::custom(format!(
                        "`{prefix}`.`{key}` must be a string, number or boolean"
                    )));
                }
            };
            kept.insert(key, Secret::new(text));
        }
        out.insert(prefix, kept);
    }
    Ok(out)
}
