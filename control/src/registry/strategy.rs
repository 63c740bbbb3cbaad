//! Per-kind behaviour of the registry (Kubernetes' `rest.Strategy`): one strategy value
//! per kind says what create, update and delete do beyond the generic object machinery,
//! and [`strategy_for`] is the one place that maps a resource to its strategy.

use crate::allocator::Claim;
use crate::registry::allocations::Allocations;
use crate::registry::Registry;
use serde_json::Value;
use skiff_api::resource::{self, ResourceInfo};
use skiff_api::status::ApiError;
use skiff_api::validation::FieldCause;
use std::collections::BTreeSet;

/// What one kind does on create, update and delete. Every method has the behaviour of a
/// kind without special rules as its default.
pub trait Strategy: Send + Sync + 'static {
    /// Spec defaults of the Kubernetes defaulting functions, applied on create and on
    /// update, so a replace that leaves a defaulted field out does not change it.
    fn default_spec(&self, _spec: &mut Value) {}

    /// Server-set fields of a new object (`PrepareForCreate`): initial status, labels.
    /// Runs after [`Strategy::default_spec`].
    fn prepare_for_create(&self, _object: &mut Value) {}

    /// Mutating admission of a new object that reads other stored objects (Kubernetes'
    /// admission plugins, such as DefaultIngressClass); runs after
    /// [`Strategy::prepare_for_create`], before validation, for dry runs too.
    fn admit_create(&self, _registry: &Registry, _object: &mut Value) -> Result<(), ApiError> {
        Ok(())
    }

    /// Fields an update of the main resource may not change or may leave out
    /// (`PrepareForUpdate`); `new` is the requested object.
    fn prepare_for_update(&self, _old: &Value, _new: &mut Value) {}

    /// Whether an update from `old` to `new` bumps `metadata.generation` (for kinds that
    /// have one).
    fn generation_changes(&self, old: &Value, new: &Value) -> bool {
        old.get("spec") != new.get("spec")
    }

    /// Validation of a new object.
    fn validate(&self, resource: &ResourceInfo, object: &Value) -> Vec<FieldCause> {
        skiff_api::validation::validate_object(resource, object)
    }

    /// Validation of an update, including immutable fields.
    fn validate_update(
        &self,
        resource: &ResourceInfo,
        old: &Value,
        new: &Value,
    ) -> Vec<FieldCause> {
        skiff_api::validation::validate_update(resource, old, new)
    }

    /// The allocated values `object` holds (cluster IPs, node ports, pod CIDRs); each is
    /// claimed in the store while the object exists.
    fn claims(&self, _object: &Value) -> BTreeSet<Claim> {
        BTreeSet::new()
    }

    /// Fills in values to allocate and checks requested ones; `old` is the stored
    /// object on update. Afterwards [`Strategy::claims`] of `object` names them all.
    fn allocate(
        &self,
        _allocations: &mut Allocations<'_>,
        _old: Option<&Value>,
        _object: &mut Value,
    ) -> Result<(), ApiError> {
        Ok(())
    }

    /// The grace period a deletion of `object` gets, given the one the request asked for;
    /// 0 removes the object at once (unless finalizers hold it).
    fn delete_grace(&self, _object: &Value, _requested: Option<i64>) -> i64 {
        0
    }

    /// Whether a deletion always waits (marks the object) even without finalizers or a
    /// grace period, as a Namespace waits for its contents to go.
    fn waits_on_delete(&self) -> bool {
        false
    }

    /// Changes to an object whose deletion becomes pending, beyond `deletionTimestamp`.
    fn prepare_for_delete(&self, _object: &mut Value) {}

    /// Subresources beyond those of the resource table that take a PUT of the whole
    /// object (a Namespace's `finalize`).
    fn extra_subresources(&self) -> &'static [&'static str] {
        &[]
    }
}

/// The strategy of a kind without special rules.
struct DefaultStrategy;

impl Strategy for DefaultStrategy {}

/// The strategy of `resource`.
pub fn strategy_for(resource: &ResourceInfo) -> &'static dyn Strategy {
    match *resource {
        resource::NAMESPACES => &super::namespace::NamespaceStrategy,
        resource::PODS => &super::pod::PodStrategy,
        resource::SERVICES => &super::service::ServiceStrategy,
        resource::NODES => &super::node::NodeStrategy,
        resource::SECRETS => &super::secret::SecretStrategy,
        resource::DEPLOYMENTS => &super::workloads::DeploymentStrategy,
        resource::REPLICA_SETS => &super::workloads::ReplicaSetStrategy,
        resource::INGRESSES => &super::ingress::IngressStrategy,
        resource::INGRESS_CLASSES => &super::ingress::IngressClassStrategy,
        _ => &DefaultStrategy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_has_a_strategy_and_special_kinds_their_own() {
        for r in skiff_api::RESOURCES {
            let _ = strategy_for(r);
        }
        assert!(strategy_for(&resource::NAMESPACES).waits_on_delete());
        assert!(!strategy_for(&resource::CONFIG_MAPS).waits_on_delete());
        assert_eq!(
            strategy_for(&resource::NAMESPACES).extra_subresources(),
            &["finalize"]
        );
    }
}
