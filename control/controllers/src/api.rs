//! The writes controllers make, as a trait: the executors of the ReplicaSet and
//! Deployment plans call it, `skiff_client::Client` implements it over HTTP, and tests
//! use [`fake::RecordingApi`], which records every call and can be told to fail.

use futures::future::BoxFuture;
use serde_json::Value;
use skiff_api::resource::ResourceInfo;
use skiff_client::{Client, ClientError};

/// The API calls a controller's executor makes. Objects go as JSON built from typed
/// structs; patches are merge patches.
pub trait ControllerApi: Send + Sync {
    fn get<'a>(
        &'a self,
        resource: &'static ResourceInfo,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Value, ClientError>>;

    fn create<'a>(
        &'a self,
        resource: &'static ResourceInfo,
        namespace: &'a str,
        object: &'a Value,
    ) -> BoxFuture<'a, Result<Value, ClientError>>;

    /// Deletes in the background; a missing object is not an error.
    fn delete<'a>(
        &'a self,
        resource: &'static ResourceInfo,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), ClientError>>;

    fn patch<'a>(
        &'a self,
        resource: &'static ResourceInfo,
        namespace: &'a str,
        name: &'a str,
        patch: &'a Value,
    ) -> BoxFuture<'a, Result<Value, ClientError>>;

    /// Writes `object`'s status (and annotations) through the status subresource; a
    /// stale cached copy (conflict, gone) is `Ok(false)`: the loop runs again when the
    /// cache catches up.
    fn replace_status<'a>(
        &'a self,
        resource: &'static ResourceInfo,
        object: &'a Value,
    ) -> BoxFuture<'a, Result<bool, ClientError>>;
}

const MERGE_PATCH: &str = "application/merge-patch+json";

impl ControllerApi for Client {
    fn get<'a>(
        &'a self,
        resource: &'static ResourceInfo,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Value, ClientError>> {
        Box::pin(Client::get(self, resource, Some(namespace), name))
    }

    fn create<'a>(
        &'a self,
        resource: &'static ResourceInfo,
        namespace: &'a str,
        object: &'a Value,
    ) -> BoxFuture<'a, Result<Value, ClientError>> {
        Box::pin(Client::create(self, resource, Some(namespace), object))
    }

    fn delete<'a>(
        &'a self,
        resource: &'static ResourceInfo,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            match Client::delete(self, resource, Some(namespace), name, "Background", None).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_not_found() => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn patch<'a>(
        &'a self,
        resource: &'static ResourceInfo,
        namespace: &'a str,
        name: &'a str,
        patch: &'a Value,
    ) -> BoxFuture<'a, Result<Value, ClientError>> {
        Box::pin(Client::patch(
            self,
            resource,
            Some(namespace),
            name,
            MERGE_PATCH,
            patch,
        ))
    }

    fn replace_status<'a>(
        &'a self,
        resource: &'static ResourceInfo,
        object: &'a Value,
    ) -> BoxFuture<'a, Result<bool, ClientError>> {
        Box::pin(self.update_status_from_cache(resource, object))
    }
}

#[cfg(test)]
pub mod fake {
    //! A fake API that records calls and answers from a script.
    use super::*;
    use std::sync::Mutex;

    /// One recorded call.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Call {
        Get(String),
        Create(String, Value),
        Delete(String),
        Patch(String, Value),
        Status(String, Value),
    }

    #[derive(Debug, Default)]
    pub struct RecordingApi {
        pub calls: Mutex<Vec<Call>>,
        /// Answers of `get`, by name.
        pub objects: Mutex<std::collections::HashMap<String, Value>>,
        /// Creates after this many succeed fail with 500.
        pub fail_creates_after: Mutex<Option<usize>>,
        /// Creates of these names fail with 409 AlreadyExists.
        pub existing_names: Mutex<Vec<String>>,
    }

    pub fn api_error(code: u16, reason: &str) -> ClientError {
        ClientError::Api {
            code,
            reason: reason.to_string(),
            message: format!("scripted {reason}"),
            status: Value::Null,
        }
    }

    impl RecordingApi {
        pub fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }

        fn record(&self, call: Call) {
            self.calls.lock().unwrap().push(call);
        }
    }

    fn name_of(object: &Value) -> String {
        object["metadata"]["name"]
            .as_str()
            .or_else(|| object["metadata"]["generateName"].as_str())
            .unwrap_or_default()
            .to_string()
    }

    impl ControllerApi for RecordingApi {
        fn get<'a>(
            &'a self,
            _resource: &'static ResourceInfo,
            _namespace: &'a str,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Value, ClientError>> {
            self.record(Call::Get(name.to_string()));
            let found = self.objects.lock().unwrap().get(name).cloned();
            Box::pin(async move { found.ok_or_else(|| api_error(404, "NotFound")) })
        }

        fn create<'a>(
            &'a self,
            _resource: &'static ResourceInfo,
            _namespace: &'a str,
            object: &'a Value,
        ) -> BoxFuture<'a, Result<Value, ClientError>> {
            let name = name_of(object);
            let created = self
                .calls()
                .iter()
                .filter(|c| matches!(c, Call::Create(..)))
                .count();
            self.record(Call::Create(name.clone(), object.clone()));
            let limit = *self.fail_creates_after.lock().unwrap();
            let exists = self.existing_names.lock().unwrap().contains(&name);
            let object = object.clone();
            Box::pin(async move {
                if exists {
                    return Err(api_error(409, "AlreadyExists"));
                }
                if limit.is_some_and(|l| created >= l) {
                    return Err(api_error(500, "InternalError"));
                }
                Ok(object)
            })
        }

        fn delete<'a>(
            &'a self,
            _resource: &'static ResourceInfo,
            _namespace: &'a str,
            name: &'a str,
        ) -> BoxFuture<'a, Result<(), ClientError>> {
            self.record(Call::Delete(name.to_string()));
            Box::pin(async { Ok(()) })
        }

        fn patch<'a>(
            &'a self,
            _resource: &'static ResourceInfo,
            _namespace: &'a str,
            name: &'a str,
            patch: &'a Value,
        ) -> BoxFuture<'a, Result<Value, ClientError>> {
            self.record(Call::Patch(name.to_string(), patch.clone()));
            let patch = patch.clone();
            Box::pin(async move { Ok(patch) })
        }

        fn replace_status<'a>(
            &'a self,
            _resource: &'static ResourceInfo,
            object: &'a Value,
        ) -> BoxFuture<'a, Result<bool, ClientError>> {
            self.record(Call::Status(name_of(object), object.clone()));
            Box::pin(async { Ok(true) })
        }
    }
}
