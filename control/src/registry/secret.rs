//! The Secret strategy: the default type and `stringData` folded into `data` on create.

use crate::registry::strategy::Strategy;
use crate::registry::typed::retyped;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use serde_json::Value;

/// Secrets (`core/v1`).
pub struct SecretStrategy;

impl Strategy for SecretStrategy {
    fn prepare_for_create(&self, object: &mut Value) {
        let Some(mut secret) = retyped::<Secret>(object) else {
            return;
        };
        secret.type_.get_or_insert_with(|| "Opaque".into());
        // As the API server does: stringData is write-only input, merged into data.
        if let Some(string_data) = secret.string_data.take() {
            let data = secret.data.get_or_insert_with(Default::default);
            for (k, v) in string_data {
                data.insert(k, ByteString(v.into_bytes()));
            }
        }
        // Only the fields this strategy owns are written back; metadata stays as it is.
        let Some(fields) = object.as_object_mut() else {
            return;
        };
        fields.remove("stringData");
        fields.insert("type".into(), Value::from(secret.type_));
        if let Some(data) = secret.data {
            if let Ok(data) = serde_json::to_value(data) {
                fields.insert("data".into(), data);
            }
        }
    }
}
