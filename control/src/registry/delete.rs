//! Deletion: of one object (at once, or by setting `deletionTimestamp` while finalizers
//! or a grace period hold it) and of many (`deletecollection`, namespace finalization)
//! in batched transactions instead of one fsync per object.

use super::{
    allocations, decode_entry, encoder, metadata_mut, object_key, parse_resource_version,
    store_error, strategy_for, string_list, timestamp, DeleteOptions, Registry, Written,
    MAX_UPDATE_ATTEMPTS,
};
use crate::store::{Entry, StoreError, TransactionError, WriteOp};
use serde_json::{json, Value};
use skiff_api::object::meta_str;
use skiff_api::resource::ResourceInfo;
use skiff_api::status::ApiError;

/// How many store ops one transaction of a group delete carries at most; an object and
/// the claims it releases always share a transaction.
pub const MAX_OPS_PER_TRANSACTION: usize = 1_000;

/// What deleting one object at its current revision comes to.
enum DeletePlan {
    /// Remove it (and release its claims): `ops[0]` deletes the object.
    Remove { ops: Vec<WriteOp> },
    /// Mark it as being deleted: `deletionTimestamp`, finalizers.
    MarkDeleting { op: WriteOp },
    /// Nothing to write (dry run, or a deletion already pending as asked); the object
    /// as the caller should see it and whether it counts as removed.
    Nothing(Written),
}

impl DeletePlan {
    fn ops(self) -> Vec<WriteOp> {
        match self {
            DeletePlan::Remove { ops } => ops,
            DeletePlan::MarkDeleting { op } => vec![op],
            DeletePlan::Nothing(_) => Vec::new(),
        }
    }

    fn removes(&self) -> bool {
        matches!(self, DeletePlan::Remove { .. })
    }
}

impl Registry {
    /// Deletes an object: at once, or by setting `deletionTimestamp` when finalizers or a
    /// pod's grace period hold it.
    pub async fn delete(
        &self,
        resource: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Written, ApiError> {
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let (entry, object) = self.get(resource, namespace, name)?;
            let plan = self.plan_delete(resource, &entry, object, options)?;
            let removes = plan.removes();
            let ops = match plan {
                DeletePlan::Nothing(written) => return Ok(written),
                plan => plan.ops(),
            };
            match self.store.transact(ops).await {
                Ok(entries) => return written_from(&entries, removes),
                // The object changed under us (or a claim did): plan again from a fresh
                // read, unless the caller made the revision a precondition.
                Err(TransactionError {
                    op,
                    error: StoreError::Conflict { .. },
                }) if op != Some(0) || options.precondition_resource_version.is_none() => continue,
                Err(e) => return Err(store_error(resource, name, e.error)),
            }
        }
        Err(ApiError::conflict(
            resource,
            name,
            "too many concurrent writes; try again",
        ))
    }

    /// Deletes every object of `items` (as listed: entry and decoded object) with the same
    /// options, up to [`MAX_OPS_PER_TRANSACTION`] ops per transaction. Objects that went
    /// away meanwhile are skipped; one that changed meanwhile is deleted on its own.
    /// Returns what became of each object still there.
    pub async fn delete_many(
        &self,
        resource: &ResourceInfo,
        items: Vec<(Entry, Value)>,
        options: &DeleteOptions,
    ) -> Result<Vec<Written>, ApiError> {
        let mut done = Vec::with_capacity(items.len());
        let mut batch = Batch::default();
        for (entry, object) in items {
            let name = meta_str(&object, "name").unwrap_or_default().to_string();
            let plan = self.plan_delete(resource, &entry, object, options)?;
            let removes = plan.removes();
            let ops = match plan {
                DeletePlan::Nothing(written) => {
                    done.push(written);
                    continue;
                }
                plan => plan.ops(),
            };
            if !batch.ops.is_empty() && batch.ops.len() + ops.len() > MAX_OPS_PER_TRANSACTION {
                let full = std::mem::take(&mut batch);
                done.extend(self.commit_batch(resource, full, options).await?);
            }
            batch.members.push(Member {
                name,
                first_op: batch.ops.len(),
                removes,
            });
            batch.ops.extend(ops);
        }
        if !batch.ops.is_empty() {
            done.extend(self.commit_batch(resource, batch, options).await?);
        }
        Ok(done)
    }

    /// Commits one batch of a group delete as one transaction. If any object in it changed
    /// since it was listed, the transaction fails as a whole and each object is deleted on
    /// its own instead (with fresh reads); objects gone by then are skipped.
    async fn commit_batch(
        &self,
        resource: &ResourceInfo,
        batch: Batch,
        options: &DeleteOptions,
    ) -> Result<Vec<Written>, ApiError> {
        let Batch { members, ops } = batch;
        let namespace_of = |key: &str| namespace_in_key(resource, key);
        let keys: Vec<String> = members
            .iter()
            .filter_map(|m| ops.get(m.first_op).map(|op| op.key().to_string()))
            .collect();
        match self.store.transact(ops).await {
            Ok(entries) => members
                .iter()
                .map(|m| {
                    let entry = entries.get(m.first_op).ok_or_else(|| {
                        ApiError::internal("the store wrote fewer entries than ops")
                    })?;
                    written_from(std::slice::from_ref(entry), m.removes)
                })
                .collect(),
            Err(TransactionError {
                op: Some(_),
                error: StoreError::Conflict { .. } | StoreError::NotFound(_),
            }) => {
                let mut done = Vec::with_capacity(members.len());
                for (member, key) in members.iter().zip(&keys) {
                    let namespace = namespace_of(key);
                    match self
                        .delete(resource, namespace.as_deref(), &member.name, options)
                        .await
                    {
                        Ok(written) => done.push(written),
                        Err(e) if e.code == 404 => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(done)
            }
            Err(e) => Err(store_error(resource, "", e.error)),
        }
    }

    /// Decides what deleting `object` (stored at `entry`) with `options` writes.
    fn plan_delete(
        &self,
        resource: &ResourceInfo,
        entry: &Entry,
        object: Value,
        options: &DeleteOptions,
    ) -> Result<DeletePlan, ApiError> {
        let name = meta_str(&object, "name").unwrap_or_default().to_string();
        let name = name.as_str();
        check_preconditions(resource, name, entry, &object, options)?;
        let mut finalizers = string_list(object.pointer("/metadata/finalizers"));
        match options.propagation_policy.as_deref() {
            Some("Foreground") if !finalizers.iter().any(|f| f == "foregroundDeletion") => {
                finalizers.push("foregroundDeletion".into())
            }
            Some("Orphan") if !finalizers.iter().any(|f| f == "orphan") => {
                finalizers.push("orphan".into())
            }
            None | Some("Background") | Some("Foreground") | Some("Orphan") => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "invalid propagationPolicy {other:?}: must be Foreground, Background or Orphan"
                )))
            }
        }
        let strategy = strategy_for(resource);
        let grace = strategy.delete_grace(&object, options.grace_period_seconds);
        let key = entry_key(resource, &object);
        if finalizers.is_empty() && grace == 0 && !strategy.waits_on_delete() {
            if options.dry_run {
                return Ok(DeletePlan::Nothing(Written::removed(object)));
            }
            // The object and the claims it holds go in one transaction.
            let claims = strategy.claims(&object);
            let uid = meta_str(&object, "uid").unwrap_or_default().to_string();
            let mut ops = vec![WriteOp::Delete {
                key,
                expected: Some(entry.revision),
                encode: encoder(object),
            }];
            ops.extend(allocations::release_ops(&self.store, &claims, &uid));
            return Ok(DeletePlan::Remove { ops });
        }
        let mut pending = object.clone();
        let now = self.clock.now();
        {
            let meta = metadata_mut(&mut pending);
            if !finalizers.is_empty() {
                meta.insert("finalizers".into(), json!(finalizers));
            }
            let already_deleting = meta.get("deletionTimestamp").is_some_and(|v| !v.is_null());
            // A shorter grace period may shorten a pending deletion, never lengthen it.
            let current = meta
                .get("deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(grace);
            if !already_deleting || grace < current {
                let deadline = now + chrono::Duration::seconds(grace);
                meta.insert("deletionTimestamp".into(), timestamp(deadline));
                meta.insert("deletionGracePeriodSeconds".into(), Value::from(grace));
            }
            meta.remove("resourceVersion");
        }
        strategy.prepare_for_delete(&mut pending);
        if options.dry_run {
            return Ok(DeletePlan::Nothing(Written::kept(pending)));
        }
        let mut unchanged = object.clone();
        metadata_mut(&mut unchanged).remove("resourceVersion");
        if pending == unchanged {
            // The deletion is already pending as asked: writing it again would only
            // produce a new resourceVersion and a watch event for nothing.
            return Ok(DeletePlan::Nothing(Written::kept(object)));
        }
        Ok(DeletePlan::MarkDeleting {
            op: WriteOp::Update {
                key,
                expected: Some(entry.revision),
                encode: encoder(pending),
            },
        })
    }
}

/// Objects of one group-delete transaction, and its ops.
#[derive(Default)]
struct Batch {
    members: Vec<Member>,
    ops: Vec<WriteOp>,
}

/// One object in a [`Batch`].
struct Member {
    name: String,
    /// The index of the op that deletes or marks the object; its claims follow it.
    first_op: usize,
    removes: bool,
}

/// The result of a delete from the entries its transaction wrote (the object's first).
fn written_from(entries: &[Entry], removed: bool) -> Result<Written, ApiError> {
    let entry = entries
        .first()
        .ok_or_else(|| ApiError::internal("the store wrote no object"))?;
    let object = decode_entry(entry)?;
    Ok(if removed {
        Written::removed(object)
    } else {
        Written::kept(object)
    })
}

/// The store key of a stored object, from its own metadata.
fn entry_key(resource: &ResourceInfo, object: &Value) -> String {
    object_key(
        resource,
        meta_str(object, "namespace"),
        meta_str(object, "name").unwrap_or_default(),
    )
}

/// The namespace segment of an object key of `resource`, for namespaced kinds.
fn namespace_in_key(resource: &ResourceInfo, key: &str) -> Option<String> {
    if !resource.namespaced {
        return None;
    }
    let rest = key.strip_prefix(&format!("/registry/{}/", resource.plural))?;
    rest.split('/').next().map(str::to_string)
}

fn check_preconditions(
    resource: &ResourceInfo,
    name: &str,
    entry: &Entry,
    object: &Value,
    options: &DeleteOptions,
) -> Result<(), ApiError> {
    if let Some(uid) = &options.precondition_uid {
        if meta_str(object, "uid") != Some(uid.as_str()) {
            return Err(ApiError::conflict(
                resource,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(object, "uid").unwrap_or_default()
                ),
            ));
        }
    }
    if let Some(rv) = &options.precondition_resource_version {
        if parse_resource_version(rv)? != entry.revision {
            return Err(ApiError::conflict(
                resource,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    entry.revision
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{collection_prefix, WriteOptions};

    async fn registry(dir: &std::path::Path) -> Registry {
        crate::registry::test_registry(dir, Default::default()).await
    }

    async fn config_maps(registry: &Registry, count: usize) -> Vec<(Entry, Value)> {
        let resource = &skiff_api::resource::CONFIG_MAPS;
        for i in 0..count {
            let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("cm-{i}")}});
            registry
                .create(resource, Some("default"), body, &WriteOptions::default())
                .await
                .unwrap();
        }
        let (_, entries) = registry
            .store
            .list(&collection_prefix(resource, Some("default")));
        entries
            .into_iter()
            .map(|(_, e)| {
                let object = decode_entry(&e).unwrap();
                (e, object)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_group_delete_takes_one_revision_per_thousand_ops() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path()).await;
        let items = config_maps(&registry, 2_500).await;
        let before = registry.store.revision();
        let resource = &skiff_api::resource::CONFIG_MAPS;
        let written = registry
            .delete_many(resource, items, &DeleteOptions::default())
            .await
            .unwrap();
        assert_eq!(written.len(), 2_500);
        assert!(written.iter().all(|w| w.removed));
        assert_eq!(registry.store.revision() - before, 3);
        let (_, left) = registry.store.list(&collection_prefix(resource, None));
        assert!(left.is_empty());
    }

    #[tokio::test]
    async fn a_group_delete_of_objects_changed_since_listed_deletes_them_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path()).await;
        let items = config_maps(&registry, 10).await;
        let resource = &skiff_api::resource::CONFIG_MAPS;
        // One object changes and one goes away after the list.
        let changed = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cm-3"}, "data": {"changed": "yes"}});
        registry
            .update(
                resource,
                Some("default"),
                "cm-3",
                changed,
                None,
                &WriteOptions::default(),
            )
            .await
            .unwrap();
        registry
            .delete(resource, Some("default"), "cm-4", &DeleteOptions::default())
            .await
            .unwrap();
        let written = registry
            .delete_many(resource, items, &DeleteOptions::default())
            .await
            .unwrap();
        assert_eq!(written.len(), 9);
        let (_, left) = registry.store.list(&collection_prefix(resource, None));
        assert!(left.is_empty());
    }

    #[test]
    fn namespaces_are_read_from_object_keys() {
        let resource = &skiff_api::resource::CONFIG_MAPS;
        assert_eq!(
            namespace_in_key(resource, "/registry/configmaps/team-a/x"),
            Some("team-a".to_string())
        );
        assert_eq!(
            namespace_in_key(&skiff_api::resource::NODES, "/registry/nodes/n1"),
            None
        );
    }
}
