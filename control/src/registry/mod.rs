//! Object semantics over the store, independent of HTTP: what create, update, patch,
//! delete and the subresources do to metadata, defaults, validation, generation,
//! graceful deletion and finalizers. The API server maps requests onto these calls.
//! What differs per kind lives in that kind's [`strategy::Strategy`].

mod allocations;
mod delete;
mod ingress;
mod namespace;
mod node;
mod pod;
mod secret;
mod service;
pub mod strategy;
mod typed;
mod workloads;

use crate::allocator::{Claim, Ranges};
use crate::store::{Entry, EventType, Revision, Store, StoreError, TransactionError, WriteOp};
use allocations::Allocations;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use skiff_api::clock::SharedClock;
use skiff_api::object::{self, meta_str, metadata_mut, DecodeError};
use skiff_api::patch::{apply_patch, PatchType};
use skiff_api::resource::ResourceInfo;
use skiff_api::status::ApiError;
use std::collections::BTreeSet;
use std::sync::Arc;
use strategy::strategy_for;

/// How many times a patch or internal update retries after losing a compare-and-swap race.
const MAX_UPDATE_ATTEMPTS: usize = 16;

/// Source of randomness, injected so tests can pin it (time comes from the registry's
/// [`SharedClock`]).
pub trait Environment: Send + Sync + 'static {
    /// A random suffix for `generateName` (5 characters, Kubernetes' alphabet).
    fn random_suffix(&self) -> String;
    fn new_uid(&self) -> String;
    /// A random number for allocations (cluster IPs, node ports, pod CIDRs).
    fn random_u32(&self) -> u32;
}

/// The thread RNG.
#[derive(Debug, Default)]
pub struct SystemEnvironment;

impl Environment for SystemEnvironment {
    fn random_suffix(&self) -> String {
        use rand::Rng;
        // Kubernetes leaves out vowels and look-alike characters so names never spell words.
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut rng = rand::thread_rng();
        (0..5)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
            .collect()
    }

    fn new_uid(&self) -> String {
        uuid::Uuid::new_v4().to_string()
    }

    fn random_u32(&self) -> u32 {
        rand::random()
    }
}

/// How `fieldValidation` treats fields the schema does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    #[default]
    Ignore,
    Warn,
    Strict,
}

/// Options shared by writes.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_validation: FieldValidation,
}

/// `DeleteOptions`, from the body or the query string.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
    pub dry_run: bool,
}

/// The result of a write: the object and warnings for the `Warning` header.
#[derive(Debug)]
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
    /// For deletes: whether the object is gone (false when deletion is pending).
    pub removed: bool,
    /// `object` exactly as stored, when this write stored it: responses send these bytes
    /// instead of encoding the object again.
    pub encoded: Option<Arc<[u8]>>,
}

impl Written {
    /// An object that was written and is still there.
    fn kept(object: Value) -> Self {
        Written {
            object,
            warnings: Vec::new(),
            removed: false,
            encoded: None,
        }
    }

    /// An object that was removed; `object` is its final state.
    fn removed(object: Value) -> Self {
        Written {
            object,
            warnings: Vec::new(),
            removed: true,
            encoded: None,
        }
    }

    /// `object`, just stored as `entry`, with the resourceVersion the store gave it: what
    /// decoding the entry would give, without parsing it back.
    fn stored(mut object: Value, entry: &Entry, removed: bool) -> Self {
        set_resource_version(&mut object, entry.revision);
        Written {
            object,
            warnings: Vec::new(),
            removed,
            encoded: Some(entry.value.clone()),
        }
    }
}

/// Object semantics on top of a [`Store`].
#[derive(Clone)]
pub struct Registry {
    pub store: Store,
    pub env: Arc<dyn Environment>,
    /// The one clock timestamps in objects come from.
    pub clock: SharedClock,
    /// The ranges cluster IPs, node ports and pod CIDRs are allocated from.
    pub ranges: Arc<Ranges>,
    /// Whether pods get service-account tokens mounted (the cluster signs them: a
    /// secure API server). Off, pods still run as an account but mount nothing.
    pub service_account_tokens: bool,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("store", &self.store)
            .finish()
    }
}

/// The store key of an object: `/registry/{plural}/{namespace}/{name}` or
/// `/registry/{plural}/{name}` for cluster-scoped kinds.
pub fn object_key(resource: &ResourceInfo, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if resource.namespaced => format!("/registry/{}/{ns}/{name}", resource.plural),
        _ => format!("/registry/{}/{name}", resource.plural),
    }
}

/// The key prefix of a collection, optionally limited to one namespace.
pub fn collection_prefix(resource: &ResourceInfo, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if resource.namespaced => format!("/registry/{}/{ns}/", resource.plural),
        _ => format!("/registry/{}/", resource.plural),
    }
}

/// Parses stored bytes; they were written by this module, so failure is an internal error.
pub fn decode_entry(entry: &Entry) -> Result<Value, ApiError> {
    serde_json::from_slice(&entry.value)
        .map_err(|e| ApiError::internal(format!("stored object is unreadable: {e}")))
}

fn decode_error(e: DecodeError) -> ApiError {
    ApiError::bad_request(e.to_string())
}

fn store_error(resource: &ResourceInfo, name: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::AlreadyExists(_) => ApiError::already_exists(resource, name),
        StoreError::NotFound(_) => ApiError::not_found(resource, name),
        StoreError::Conflict { .. } => ApiError::modified(resource, name),
        StoreError::Compacted { requested, oldest } => {
            ApiError::gone(format!("too old resource version: {requested} ({oldest})"))
        }
        StoreError::Failed(m) => {
            ApiError::service_unavailable(format!("the store refuses writes: {m}"))
        }
        other => ApiError::internal(other.to_string()),
    }
}

/// An encoder that writes `object` with `metadata.resourceVersion` set to the revision.
fn encoder(mut object: Value) -> crate::store::Encoder {
    Box::new(move |revision| {
        set_resource_version(&mut object, revision);
        serde_json::to_vec(&object).unwrap_or_default()
    })
}

/// The one way `metadata.resourceVersion` is set, so an object kept by a writer equals
/// the one its encoder stored.
fn set_resource_version(object: &mut Value, revision: Revision) {
    metadata_mut(object).insert("resourceVersion".into(), Value::from(revision.to_string()));
}

fn timestamp(t: DateTime<Utc>) -> Value {
    Value::from(t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

fn parse_resource_version(rv: &str) -> Result<Revision, ApiError> {
    rv.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid resourceVersion {rv:?}: must be a decimal number"
        ))
    })
}

/// Collects fields of `input` that `normalized` dropped: the unknown fields.
fn unknown_fields(input: &Value, normalized: &Value, path: &str, out: &mut Vec<String>) {
    match (input, normalized) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    None => out.push(child),
                    Some(n) => unknown_fields(v, n, &child, out),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, n)) in a.iter().zip(b).enumerate() {
                unknown_fields(v, n, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes a request object of `kind`: checks its type meta against the URL, normalises
/// it through the typed struct and applies `fieldValidation` to unknown fields.
pub fn decode_request_object(
    api_version: &str,
    kind: &str,
    mut body: Value,
    validation: FieldValidation,
    warnings: &mut Vec<String>,
) -> Result<Value, ApiError> {
    object::check_type_meta(&mut body, api_version, kind).map_err(decode_error)?;
    let normalized = object::normalize_kind(kind, body.clone()).map_err(decode_error)?;
    if validation != FieldValidation::Ignore {
        let mut unknown = Vec::new();
        unknown_fields(&body, &normalized, "", &mut unknown);
        if !unknown.is_empty() {
            let lines: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            if validation == FieldValidation::Strict {
                return Err(ApiError::bad_request(format!(
                    "strict decoding error: {}",
                    lines.join(", ")
                )));
            }
            warnings.extend(lines);
        }
    }
    Ok(normalized)
}

/// Upstream's `checkName` on a patched object: a patch that changes or removes the name
/// (`{"metadata":null}`, `{"metadata":{"$patch":"delete"}}`, a JSON patch removing
/// `/metadata/name`) is refused, where refilling the name from the stored object would
/// silently drop the labels, annotations and owner references the patch emptied.
fn check_patched_name(
    patched: &Value,
    name: &str,
    namespace: Option<&str>,
) -> Result<(), ApiError> {
    let patched_name = meta_str(patched, "name").unwrap_or_default();
    if patched_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({patched_name}) does not match the name on the URL ({name})"
        )));
    }
    if let (Some(ns), Some(expected)) = (meta_str(patched, "namespace"), namespace) {
        if !ns.is_empty() && ns != expected {
            return Err(ApiError::bad_request(format!(
                "the namespace of the object ({ns}) does not match the namespace on the request ({expected})"
            )));
        }
    }
    Ok(())
}

impl Registry {
    pub fn new(
        store: Store,
        env: Arc<dyn Environment>,
        clock: SharedClock,
        ranges: Arc<Ranges>,
    ) -> Self {
        Registry {
            store,
            env,
            clock,
            ranges,
            service_account_tokens: false,
        }
    }

    /// An allocation context for one write of `name`, which holds `held` so far.
    fn allocations<'a>(
        &'a self,
        resource: &'a ResourceInfo,
        name: &'a str,
        held: BTreeSet<Claim>,
    ) -> Allocations<'a> {
        Allocations::new(&self.ranges, &self.store, &*self.env, resource, name, held)
    }

    /// Reads every stored object of `resource` (in `namespace`, or all of them).
    pub fn list_objects(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
    ) -> Result<Vec<Value>, ApiError> {
        let (_, entries) = self.store.list(&collection_prefix(resource, namespace));
        entries
            .iter()
            .map(|(_, entry)| decode_entry(entry))
            .collect()
    }

    /// Reads one object.
    pub fn get(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(Entry, Value), ApiError> {
        let entry = self
            .store
            .get(&object_key(resource, namespace, name))
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        let value = decode_entry(&entry)?;
        Ok((entry, value))
    }

    fn check_namespace_writable(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
    ) -> Result<(), ApiError> {
        if !resource.namespaced {
            return Ok(());
        }
        let ns = namespace.unwrap_or_default();
        let ns_resource = &skiff_api::resource::NAMESPACES;
        let entry = self
            .store
            .get(&object_key(ns_resource, None, ns))
            .ok_or_else(|| ApiError::namespace_not_found(ns))?;
        let object = decode_entry(&entry)?;
        if object
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null())
        {
            return Err(ApiError::forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            )));
        }
        Ok(())
    }

    /// Creates an object from a request body already parsed as JSON.
    pub async fn create(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        body: Value,
        options: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let mut warnings = Vec::new();
        let mut object = decode_request_object(
            &resource.api_version(),
            resource.kind,
            body,
            options.field_validation,
            &mut warnings,
        )?;
        let now = self.clock.now();
        {
            let meta = metadata_mut(&mut object);
            if resource.namespaced {
                let url_ns = namespace.unwrap_or_default();
                match meta.get("namespace").and_then(Value::as_str) {
                    Some(ns) if !ns.is_empty() && ns != url_ns => {
                        return Err(ApiError::bad_request(format!(
                            "the namespace of the provided object ({ns}) does not match the namespace sent on the request ({url_ns})"
                        )));
                    }
                    _ => {
                        meta.insert("namespace".into(), Value::from(url_ns));
                    }
                }
            } else {
                meta.remove("namespace");
            }
            let has_name = meta
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            if !has_name {
                if let Some(prefix) = meta
                    .get("generateName")
                    .and_then(Value::as_str)
                    .filter(|p| !p.is_empty())
                {
                    let name = format!("{prefix}{}", self.env.random_suffix());
                    meta.insert("name".into(), Value::from(name));
                }
            }
            meta.insert("uid".into(), Value::from(self.env.new_uid()));
            meta.insert("creationTimestamp".into(), timestamp(now));
            meta.remove("resourceVersion");
            meta.remove("deletionTimestamp");
            meta.remove("deletionGracePeriodSeconds");
            meta.remove("managedFields");
            meta.remove("selfLink");
            if resource.has_generation {
                meta.insert("generation".into(), Value::from(1));
            } else {
                meta.remove("generation");
            }
        }
        let name = meta_str(&object, "name").unwrap_or_default().to_string();
        let strategy = strategy_for(resource);
        if let Some(spec) = object.get_mut("spec") {
            strategy.default_spec(spec);
        }
        strategy.prepare_for_create(&mut object);
        strategy.admit_create(self, &mut object)?;
        let causes = strategy.validate(resource, &object);
        if !causes.is_empty() {
            return Err(ApiError::invalid(resource, &name, causes));
        }
        self.check_namespace_writable(resource, namespace)?;
        let key = object_key(resource, namespace, &name);
        let uid = meta_str(&object, "uid").unwrap_or_default().to_string();
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let mut allocated = object.clone();
            strategy.allocate(
                &mut self.allocations(resource, &name, BTreeSet::new()),
                None,
                &mut allocated,
            )?;
            if options.dry_run {
                if self.store.get(&key).is_some() {
                    return Err(ApiError::already_exists(resource, &name));
                }
                return Ok(Written {
                    object: allocated,
                    warnings,
                    removed: false,
                    encoded: None,
                });
            }
            // The object and the claims of its allocated values are one transaction:
            // neither exists without the other.
            let mut ops = vec![WriteOp::Create {
                key: key.clone(),
                encode: encoder(allocated.clone()),
            }];
            ops.extend(allocations::claim_ops(
                &strategy.claims(&allocated),
                &key,
                &uid,
            ));
            match self.store.transact(ops).await {
                Ok(entries) => {
                    let entry = entries
                        .first()
                        .ok_or_else(|| ApiError::internal("the store wrote no object"))?;
                    let mut written = Written::stored(allocated, entry, false);
                    written.warnings = warnings;
                    return Ok(written);
                }
                // Another write claimed a value between the choice and the commit: choose
                // again (a requested value is then refused as already allocated).
                Err(TransactionError {
                    op: Some(op),
                    error: StoreError::AlreadyExists(_),
                }) if op > 0 => continue,
                Err(e) => return Err(store_error(resource, &name, e.error)),
            }
        }
        Err(ApiError::conflict(
            resource,
            &name,
            "too many concurrent allocations; try again",
        ))
    }

    /// Replaces an object (PUT), or its status with `subresource = Some("status")`.
    pub async fn update(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        body: Value,
        subresource: Option<&str>,
        options: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let mut warnings = Vec::new();
        let new = decode_request_object(
            &resource.api_version(),
            resource.kind,
            body,
            options.field_validation,
            &mut warnings,
        )?;
        let body_name = meta_str(&new, "name").unwrap_or_default();
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if let (true, Some(ns)) = (resource.namespaced, meta_str(&new, "namespace")) {
            if !ns.is_empty() && Some(ns) != namespace {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({ns}) does not match the namespace sent on the request ({})",
                    namespace.unwrap_or_default()
                )));
            }
        }
        let precondition = meta_str(&new, "resourceVersion")
            .filter(|rv| !rv.is_empty())
            .map(parse_resource_version)
            .transpose()?;
        let (entry, old) = self.get(resource, namespace, name)?;
        if precondition.is_some_and(|rv| rv != entry.revision) {
            return Err(ApiError::modified(resource, name));
        }
        let mut written = self
            .write_update(
                resource,
                namespace,
                name,
                &entry,
                old,
                new,
                subresource,
                options.dry_run,
            )
            .await?;
        written.warnings = warnings;
        Ok(written)
    }

    /// Patches an object, retrying when a concurrent write wins the race (unless the patch
    /// itself carries a `resourceVersion`, which is then a precondition).
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        patch_type: PatchType,
        patch: &Value,
        subresource: Option<&str>,
        options: &WriteOptions,
    ) -> Result<(Written, bool), ApiError> {
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let (entry, old) = match self.get(resource, namespace, name) {
                Ok(found) => found,
                Err(e)
                    if e.code == 404 && patch_type == PatchType::Apply && subresource.is_none() =>
                {
                    // Server-side apply creates what is missing.
                    let mut body = patch.clone();
                    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.insert("name".into(), Value::from(name));
                    }
                    return Ok((self.create(resource, namespace, body, options).await?, true));
                }
                Err(e) => return Err(e),
            };
            let patched = apply_patch(patch_type, &old, patch).map_err(|e| match e {
                skiff_api::patch::PatchError::JsonPatchFailed(m) => {
                    ApiError::new(422, "Invalid", m)
                }
                skiff_api::patch::PatchError::TooLarge(m) => {
                    ApiError::new(413, "RequestEntityTooLarge", m)
                }
                other => ApiError::bad_request(other.to_string()),
            })?;
            let mut warnings = Vec::new();
            let new = decode_request_object(
                &resource.api_version(),
                resource.kind,
                patched.clone(),
                options.field_validation,
                &mut warnings,
            )?;
            check_patched_name(&new, name, namespace)?;
            let patch_rv = patch
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty());
            if let Some(rv) = patch_rv {
                if parse_resource_version(rv)? != entry.revision {
                    return Err(ApiError::modified(resource, name));
                }
            }
            match self
                .write_update(
                    resource,
                    namespace,
                    name,
                    &entry,
                    old,
                    new,
                    subresource,
                    options.dry_run,
                )
                .await
            {
                Err(e) if e.reason == "Conflict" && patch_rv.is_none() => continue,
                Err(e) => return Err(e),
                Ok(mut written) => {
                    written.warnings = warnings;
                    return Ok((written, false));
                }
            }
        }
        Err(ApiError::conflict(
            resource,
            name,
            "too many concurrent writes; try again",
        ))
    }

    /// Computes the stored object from `old` and the requested `new` and writes it with a
    /// compare-and-swap on `entry`'s revision.
    #[allow(clippy::too_many_arguments)]
    async fn write_update(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        entry: &Entry,
        old: Value,
        mut new: Value,
        subresource: Option<&str>,
        dry_run: bool,
    ) -> Result<Written, ApiError> {
        if subresource == Some("status") {
            // The status subresource changes status and, as in Kubernetes' status
            // strategies, annotations (controllers record revisions there without
            // bumping the generation); spec and everything else stay.
            let status = new.get("status").cloned();
            let annotations = new.pointer("/metadata/annotations").cloned();
            new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    new.as_object_mut().map(|o| o.remove("status"));
                }
            }
            let meta = metadata_mut(&mut new);
            match annotations {
                Some(a) => {
                    meta.insert("annotations".into(), a);
                }
                None => {
                    meta.remove("annotations");
                }
            }
        } else if resource.subresource("status").is_some() {
            // The main resource keeps the stored status.
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().map(|o| o.remove("status"));
                }
            }
        }
        {
            let old_meta = old
                .get("metadata")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let meta = metadata_mut(&mut new);
            for field in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old_meta.get(field) {
                    Some(v) => meta.insert(field.into(), v.clone()),
                    None => meta.remove(field),
                };
            }
            meta.remove("resourceVersion");
            meta.remove("managedFields");
            if old_meta.get("deletionTimestamp").is_some() {
                let old_finalizers = string_list(old_meta.get("finalizers"));
                let added: Vec<String> = string_list(meta.get("finalizers"))
                    .into_iter()
                    .filter(|f| !old_finalizers.contains(f))
                    .collect();
                if !added.is_empty() {
                    return Err(ApiError::invalid(
                        resource,
                        name,
                        vec![skiff_api::validation::FieldCause::forbidden(
                            "metadata.finalizers",
                            "no new finalizers can be added if the object is being deleted",
                        )],
                    ));
                }
            }
        }
        let strategy = strategy_for(resource);
        if subresource.is_none() {
            strategy.prepare_for_update(&old, &mut new);
            if let Some(spec) = new.get_mut("spec") {
                strategy.default_spec(spec);
            }
            // Compared after defaulting, so a replace that leaves defaults out is no change.
            if resource.has_generation && strategy.generation_changes(&old, &new) {
                let generation = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
                    .saturating_add(1);
                metadata_mut(&mut new).insert("generation".into(), Value::from(generation));
            }
        }
        let causes = strategy.validate_update(resource, &old, &new);
        if !causes.is_empty() {
            return Err(ApiError::invalid(resource, name, causes));
        }
        let held = strategy.claims(&old);
        if subresource.is_none() {
            strategy.allocate(
                &mut self.allocations(resource, name, held.clone()),
                Some(&old),
                &mut new,
            )?;
        }
        let mut old_without_rv = old.clone();
        metadata_mut(&mut old_without_rv).remove("resourceVersion");
        if new == old_without_rv {
            // Nothing changed: no write, no new resourceVersion, no watch event.
            return Ok(Written::kept(old));
        }
        let key = object_key(resource, namespace, name);
        // As Kubernetes' `ShouldDeleteDuringUpdate`: an object being deleted goes once its
        // last finalizer is removed, unless it is a pod still inside its grace period.
        let finalized = new
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null())
            && string_list(new.pointer("/metadata/finalizers")).is_empty()
            && new
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                == 0;
        if dry_run {
            return Ok(Written::kept(new));
        }
        let uid = meta_str(&old, "uid").unwrap_or_default().to_string();
        let (ops, removed) = if finalized {
            // The last finalizer is gone from an object being deleted: remove it and
            // release what it held.
            let mut ops = vec![WriteOp::Delete {
                key,
                expected: Some(entry.revision),
                encode: encoder(new.clone()),
            }];
            ops.extend(allocations::release_ops(&self.store, &held, &uid));
            (ops, true)
        } else {
            // Claims follow the object: new values are claimed and dropped ones released
            // in the same transaction (a Service that stops being NodePort frees its ports).
            let holds = strategy.claims(&new);
            let mut ops = vec![WriteOp::Update {
                key: key.clone(),
                expected: Some(entry.revision),
                encode: encoder(new.clone()),
            }];
            let gained: BTreeSet<Claim> = holds.difference(&held).cloned().collect();
            let dropped: BTreeSet<Claim> = held.difference(&holds).cloned().collect();
            ops.extend(allocations::claim_ops(&gained, &key, &uid));
            ops.extend(allocations::release_ops(&self.store, &dropped, &uid));
            (ops, false)
        };
        let entries =
            self.store.transact(ops).await.map_err(|e| match e {
                // A value claimed by a concurrent write: the caller retries from a fresh read.
                TransactionError {
                    op: Some(op),
                    error:
                        StoreError::AlreadyExists(_)
                        | StoreError::Conflict { .. }
                        | StoreError::NotFound(_),
                } if op > 0 => ApiError::modified(resource, name),
                other => store_error(resource, name, other.error),
            })?;
        let entry = entries
            .first()
            .ok_or_else(|| ApiError::internal("the store wrote no object"))?;
        // A clone of the object kept costs less than parsing the stored bytes back.
        Ok(Written::stored(new, entry, removed))
    }

    /// Binds a pod to a node (`pods/{name}/binding`).
    pub async fn bind(&self, namespace: &str, name: &str, binding: Value) -> Result<(), ApiError> {
        let pods = &skiff_api::resource::PODS;
        let mut binding = binding;
        object::check_type_meta(&mut binding, "v1", "Binding").map_err(decode_error)?;
        // Straight into the typed struct: the binding is read, never stored.
        let binding: k8s_openapi::api::core::v1::Binding = serde_json::from_value(binding)
            .map_err(|e| ApiError::bad_request(format!("invalid Binding: {e}")))?;
        let target = binding.target.name.unwrap_or_default();
        if target.is_empty() {
            return Err(ApiError::invalid(
                pods,
                name,
                vec![skiff_api::validation::FieldCause::required("target.name")],
            ));
        }
        let now = timestamp(self.clock.now());
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let (entry, mut pod) = self.get(pods, Some(namespace), name)?;
            if pod
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|v| !v.is_null())
            {
                return Err(ApiError::conflict(
                    pods,
                    name,
                    "pod is being deleted, cannot be assigned to a host",
                ));
            }
            if let Some(node) = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            {
                return Err(ApiError::conflict(
                    pods,
                    name,
                    &format!("pod {name} is already assigned to node {node:?}"),
                ));
            }
            pod["spec"]["nodeName"] = Value::from(target.clone());
            let conditions = pod["status"]
                .as_object_mut()
                .map(|s| s.entry("conditions").or_insert(json!([])));
            if let Some(Value::Array(list)) = conditions {
                list.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
                list.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}));
            }
            metadata_mut(&mut pod).remove("resourceVersion");
            let key = object_key(pods, Some(namespace), name);
            match self
                .store
                .write(WriteOp::Update {
                    key,
                    expected: Some(entry.revision),
                    encode: encoder(pod),
                })
                .await
            {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_error(pods, name, e)),
            }
        }
        Err(ApiError::conflict(
            pods,
            name,
            "too many concurrent writes; try again",
        ))
    }

    /// Removes the contents of a namespace being deleted, then the namespace itself.
    /// Returns whether the namespace is gone.
    pub async fn finalize_namespace(&self, namespace: &str) -> Result<bool, ApiError> {
        let ns_resource = &skiff_api::resource::NAMESPACES;
        let mut remaining = 0;
        for resource in skiff_api::RESOURCES.iter().filter(|r| r.namespaced) {
            let (_, entries) = self
                .store
                .list(&collection_prefix(resource, Some(namespace)));
            let mut to_delete = Vec::new();
            for (_, entry) in entries {
                let object = decode_entry(&entry)?;
                let deleting = object
                    .pointer("/metadata/deletionTimestamp")
                    .is_some_and(|v| !v.is_null());
                if deleting {
                    // Waiting for its finalizers or grace period.
                    remaining += 1;
                } else {
                    to_delete.push((entry, object));
                }
            }
            // The contents go in batched transactions, not one fsync per object.
            let written = self
                .delete_many(resource, to_delete, &DeleteOptions::default())
                .await?;
            remaining += written.iter().filter(|w| !w.removed).count();
        }
        if remaining > 0 {
            return Ok(false);
        }
        let (entry, mut ns) = match self.get(ns_resource, None, namespace) {
            Ok(found) => found,
            Err(e) if e.code == 404 => return Ok(true),
            Err(e) => return Err(e),
        };
        if let Some(spec) = ns.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("finalizers".into(), json!([]));
        }
        let key = object_key(ns_resource, None, namespace);
        let op = if string_list(ns.pointer("/metadata/finalizers")).is_empty() {
            WriteOp::Delete {
                key,
                expected: Some(entry.revision),
                encode: encoder(ns),
            }
        } else {
            metadata_mut(&mut ns).remove("resourceVersion");
            WriteOp::Update {
                key,
                expected: Some(entry.revision),
                encode: encoder(ns),
            }
        };
        match self.store.write(op).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(store_error(ns_resource, namespace, e)),
        }
    }

    /// Makes sure the namespaces every cluster starts with exist.
    /// The default namespaces, each with its `default` ServiceAccount already (the
    /// service-account controller makes those of later namespaces), so pods created
    /// right after the first start find their account.
    pub async fn ensure_default_namespaces(&self) -> Result<(), ApiError> {
        let ns = &skiff_api::resource::NAMESPACES;
        let accounts = &skiff_api::resource::SERVICE_ACCOUNTS;
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let namespace =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            self.create_if_absent(ns, None, namespace).await?;
            let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": skiff_api::serviceaccount::DEFAULT_ACCOUNT, "namespace": name}});
            self.create_if_absent(accounts, Some(name), account).await?;
        }
        Ok(())
    }

    /// Creates `object` unless one of its name exists (maybe edited: it is left as it
    /// is).
    pub async fn create_if_absent(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        object: Value,
    ) -> Result<(), ApiError> {
        let name = meta_str(&object, "name").unwrap_or_default().to_string();
        if self
            .store
            .get(&object_key(resource, namespace, &name))
            .is_some()
        {
            return Ok(());
        }
        match self
            .create(resource, namespace, object, &WriteOptions::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.reason == "AlreadyExists" => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Maps a watch event to the Kubernetes event type string.
pub fn event_type_name(event_type: EventType) -> &'static str {
    match event_type {
        EventType::Added => "ADDED",
        EventType::Modified => "MODIFIED",
        EventType::Deleted => "DELETED",
    }
}

/// A registry on a fresh store in `dir` with `allocation` ranges, for unit tests.
#[cfg(test)]
pub(crate) async fn test_registry(
    dir: &std::path::Path,
    allocation: crate::allocator::AllocationConfig,
) -> Registry {
    let store = Store::open(dir, crate::store::StoreConfig::default()).unwrap();
    let registry = Registry::new(
        store,
        Arc::new(SystemEnvironment),
        skiff_api::clock::system(),
        Arc::new(allocation.ranges().unwrap()),
    );
    registry.ensure_default_namespaces().await.unwrap();
    registry
}
