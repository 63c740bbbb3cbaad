//! The compact form the agent's pod informer caches: each pod as its JSON text plus the
//! two fields the informer reads, decoded into a typed `Pod` only when a sync needs it.
//!
//! A `serde_json::Value` tree costs a map allocation with its index table for every
//! object in the pod (measured: about 12.8 KiB of heap per idle pod, the largest heap
//! item per pod), and a typed `Pod` several KiB of mostly empty optional fields; the text
//! of the same pod is one allocation of a few KiB. Idle pods are synced rarely (on a
//! resync or a runtime event), so decoding the text once per sync is cheap next to the
//! memory it saves on a node with tens of thousands of pods.

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use skiff_api::resource::ResourceInfo;
use skiff_client::informer::{key_of, CacheObject};

/// One pod in the agent's informer cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPod {
    key: String,
    resource_version: Option<String>,
    /// The complete object (kind and apiVersion included), as compact JSON.
    json: Box<str>,
}

impl CachedPod {
    /// Encodes `pod`, filling in its type when a list item left it out.
    pub fn new(mut pod: Value) -> Self {
        if let Some(object) = pod.as_object_mut() {
            let pods = &skiff_api::resource::PODS;
            if !object.contains_key("kind") {
                object.insert("kind".into(), Value::from(pods.kind));
                object.insert("apiVersion".into(), Value::from(pods.api_version()));
            }
        }
        let resource_version = pod
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        CachedPod {
            key: key_of(&pod),
            resource_version,
            // Serializing a `Value` cannot fail (its keys are strings).
            json: serde_json::to_string(&pod).unwrap_or_default().into(),
        }
    }

    /// The pod, for a sync.
    pub fn pod(&self) -> Result<Pod, serde_json::Error> {
        serde_json::from_str(&self.json)
    }

    /// The pod as a JSON value (tests check the text keeps every field).
    #[cfg(test)]
    fn value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(&self.json)
    }
}

impl<'de> Deserialize<'de> for CachedPod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(CachedPod::new)
    }
}

impl CacheObject for CachedPod {
    fn cache_key(&self) -> String {
        self.key.clone()
    }

    fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }

    // The type is filled in by `new` already: this cache holds pods only.
    fn complete_type(&mut self, _resource: &ResourceInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_cached_pod_decodes_to_the_object_it_was_made_from_with_its_type() {
        let item = json!({"metadata": {"name": "a", "namespace": "ns", "resourceVersion": "7",
            "uid": "u1"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let cached: CachedPod = serde_json::from_value(item.clone()).unwrap();
        assert_eq!(cached.cache_key(), "ns/a");
        assert_eq!(cached.resource_version(), Some("7"));
        let mut expected = item;
        expected["kind"] = json!("Pod");
        expected["apiVersion"] = json!("v1");
        assert_eq!(cached.value().unwrap(), expected);
        let pod = cached.pod().unwrap();
        assert_eq!(pod.metadata.uid.as_deref(), Some("u1"));
        assert_eq!(pod.spec.unwrap().containers[0].image.as_deref(), Some("i"));
    }

    #[test]
    fn a_typed_pod_keeps_its_own_type_fields() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b"}});
        let cached = CachedPod::new(pod.clone());
        assert_eq!(cached.cache_key(), "b");
        assert_eq!(cached.resource_version(), None);
        assert_eq!(cached.value().unwrap(), pod);
    }
}
