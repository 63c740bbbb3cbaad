//! The registry's side of allocation: checks requested values and chooses free ones
//! against the claims committed in the store, and turns claims into the store ops that
//! create or release them in the same transaction as their object.

use crate::allocator::{Claim, ClaimRecord, RangeKind, Ranges, Rejection};
use crate::registry::Environment;
use crate::store::{Store, WriteOp};
use serde_json::Value;
use skiff_api::resource::ResourceInfo;
use skiff_api::status::ApiError;
use skiff_api::validation::FieldCause;
use std::collections::BTreeSet;

/// Allocation for one write of one object: what it already holds and what it picked.
pub struct Allocations<'a> {
    ranges: &'a Ranges,
    store: &'a Store,
    env: &'a dyn Environment,
    resource: &'a ResourceInfo,
    name: &'a str,
    /// Claims the object held before this write (empty on create): requesting them
    /// again is not a collision.
    held: BTreeSet<Claim>,
    /// Values taken during this write, so one object never picks a value twice.
    picked: BTreeSet<Claim>,
}

impl<'a> Allocations<'a> {
    pub fn new(
        ranges: &'a Ranges,
        store: &'a Store,
        env: &'a dyn Environment,
        resource: &'a ResourceInfo,
        name: &'a str,
        held: BTreeSet<Claim>,
    ) -> Self {
        Allocations {
            ranges,
            store,
            env,
            resource,
            name,
            held,
            picked: BTreeSet::new(),
        }
    }

    /// Checks a value the user asked for: in range and not claimed by anyone else.
    /// Returns it in canonical form. `field` names it in errors (`spec.clusterIP`).
    pub fn request(
        &mut self,
        kind: RangeKind,
        value: &str,
        field: &str,
    ) -> Result<String, ApiError> {
        let range = self.ranges.get(kind);
        let noun = noun(kind);
        let canonical = range.check_requested(value).map_err(|rejection| {
            let detail = match rejection {
                Rejection::Malformed => format!("must be a valid {noun}"),
                Rejection::OutsideRange => format!(
                    "provided {noun} is not in the valid range. The range of valid {noun}s is {}",
                    range.describe()
                ),
            };
            self.invalid(field, value, detail)
        })?;
        let claim = Claim::new(kind, canonical.clone());
        if !self.held.contains(&claim)
            && !self.picked.contains(&claim)
            && self.store.get(&claim.key()).is_some()
        {
            return Err(self.invalid(
                field,
                value,
                format!("provided {noun} is already allocated"),
            ));
        }
        self.picked.insert(claim);
        Ok(canonical)
    }

    /// Chooses a free value of `kind`; a 500 when the range is full.
    pub fn choose(&mut self, kind: RangeKind) -> Result<String, ApiError> {
        self.try_choose(kind).ok_or_else(|| {
            ApiError::internal(format!(
                "failed to allocate a {}: range {} is full",
                noun(kind),
                self.ranges.get(kind).describe()
            ))
        })
    }

    /// Chooses a free value of `kind`, if the range has one.
    pub fn try_choose(&mut self, kind: RangeKind) -> Option<String> {
        let env = self.env;
        let value = self.ranges.get(kind).choose(
            || env.random_u32(),
            |v| {
                let claim = Claim::new(kind, v);
                !self.picked.contains(&claim) && self.store.get(&claim.key()).is_none()
            },
        )?;
        self.picked.insert(Claim::new(kind, value.clone()));
        Some(value)
    }

    /// A 422 for a change the kind does not allow.
    pub fn forbidden(&self, field: &str, detail: &str) -> ApiError {
        ApiError::invalid(
            self.resource,
            self.name,
            vec![FieldCause::forbidden(field, detail)],
        )
    }

    fn invalid(&self, field: &str, value: &str, detail: String) -> ApiError {
        ApiError::invalid(
            self.resource,
            self.name,
            vec![FieldCause::invalid(field, &Value::from(value), detail)],
        )
    }
}

fn noun(kind: RangeKind) -> &'static str {
    match kind {
        RangeKind::ServiceIps => "IP",
        RangeKind::NodePorts => "port",
        RangeKind::PodCidrs => "CIDR",
    }
}

/// Ops that create a claim for each value in `claims`, held by the object at `owner`.
pub fn claim_ops(claims: &BTreeSet<Claim>, owner: &str, uid: &str) -> Vec<WriteOp> {
    claims
        .iter()
        .map(|claim| {
            let record = ClaimRecord {
                owner: owner.to_string(),
                uid: uid.to_string(),
            };
            WriteOp::Create {
                key: claim.key(),
                encode: Box::new(move |_| serde_json::to_vec(&record).unwrap_or_default()),
            }
        })
        .collect()
}

/// Ops that release each claim in `claims` that the object with `uid` holds. Values it
/// names but never claimed (objects written before claims existed) are left alone.
pub fn release_ops(store: &Store, claims: &BTreeSet<Claim>, uid: &str) -> Vec<WriteOp> {
    claims
        .iter()
        .filter_map(|claim| {
            let key = claim.key();
            let entry = store.get(&key)?;
            let record: ClaimRecord = serde_json::from_slice(&entry.value).ok()?;
            let value = entry.value.to_vec();
            (record.uid == uid).then(|| WriteOp::Delete {
                key,
                expected: Some(entry.revision),
                encode: Box::new(move |_| value),
            })
        })
        .collect()
}
