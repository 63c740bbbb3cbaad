//! Moving between the registry's JSON objects and typed k8s-openapi structs inside
//! strategies. Stored objects were normalised through the same structs when decoded,
//! so a round trip keeps every field.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// `value` as the typed struct `T`, if it is one.
pub fn retyped<T: DeserializeOwned>(value: &Value) -> Option<T> {
    serde_json::from_value(value.clone()).ok()
}

/// Runs `change` on `value` as a `T` and writes the result back; leaves `value` alone
/// if it is not a `T` (validation reports that).
pub fn with_typed<T: DeserializeOwned + Serialize>(value: &mut Value, change: impl FnOnce(&mut T)) {
    let Some(mut typed) = retyped::<T>(value) else {
        return;
    };
    change(&mut typed);
    if let Ok(v) = serde_json::to_value(typed) {
        *value = v;
    }
}
