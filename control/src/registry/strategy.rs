//! Per-kind behaviour of the registry (Kubernetes' `rest.Strategy`): one strategy value
//! per kind says what create, update and delete do beyond the generic object machinery,
//! and [`strategy_for`] is the one place that maps a resource to its strategy.

use crate::allocator::Claim;
use crate::registry::allocations::Allocations;
use serde_json::Value;
use skiff_api::resource::{self, ResourceInfo};
use skiff_api::status::ApiError;
use std::collections::BTreeSet;

/// What one kind does on create, update and delete. Every method has the behaviour of a
/// kind without special rules as its default.
pub trait Strategy: Send + Sync + 'static {
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
        _ => &DefaultStrategy,
    }
}
