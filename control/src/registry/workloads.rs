//! The Deployment and ReplicaSet strategies: spec defaults (including their pod
//! templates'), no client-set status on create, and a Deployment's generation that
//! also moves with its annotations (rollback and restart requests live there).

use crate::registry::pod::default_pod_spec;
use crate::registry::strategy::Strategy;
use crate::registry::typed::with_typed;
use k8s_openapi::api::apps::v1::{
    DeploymentSpec, DeploymentStrategy as RolloutStrategy, ReplicaSetSpec, RollingUpdateDeployment,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

/// Deployments (`apps/v1`).
pub struct DeploymentStrategy;

impl Strategy for DeploymentStrategy {
    fn default_spec(&self, spec: &mut Value) {
        with_typed(spec, |spec: &mut DeploymentSpec| {
            spec.replicas.get_or_insert(1);
            spec.revision_history_limit.get_or_insert(10);
            spec.progress_deadline_seconds.get_or_insert(600);
            let strategy = spec.strategy.get_or_insert_with(RolloutStrategy::default);
            let rollout_type = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
            if rollout_type == "RollingUpdate" {
                let rolling = strategy
                    .rolling_update
                    .get_or_insert_with(RollingUpdateDeployment::default);
                rolling
                    .max_surge
                    .get_or_insert_with(|| IntOrString::String("25%".into()));
                rolling
                    .max_unavailable
                    .get_or_insert_with(|| IntOrString::String("25%".into()));
            }
            if let Some(pod_spec) = spec.template.spec.as_mut() {
                default_pod_spec(pod_spec);
            }
        });
    }

    fn prepare_for_create(&self, deployment: &mut Value) {
        drop_status(deployment);
    }

    fn generation_changes(&self, old: &Value, new: &Value) -> bool {
        old.get("spec") != new.get("spec")
            || old.pointer("/metadata/annotations") != new.pointer("/metadata/annotations")
    }
}

/// ReplicaSets (`apps/v1`).
pub struct ReplicaSetStrategy;

impl Strategy for ReplicaSetStrategy {
    fn default_spec(&self, spec: &mut Value) {
        with_typed(spec, |spec: &mut ReplicaSetSpec| {
            spec.replicas.get_or_insert(1);
            if let Some(pod_spec) = spec.template.as_mut().and_then(|t| t.spec.as_mut()) {
                default_pod_spec(pod_spec);
            }
        });
    }

    fn prepare_for_create(&self, replica_set: &mut Value) {
        drop_status(replica_set);
    }
}

/// Status is the controllers' to write: a create starts without one.
fn drop_status(object: &mut Value) {
    if let Some(o) = object.as_object_mut() {
        o.remove("status");
    }
}
