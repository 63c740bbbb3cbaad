//! The review "resources": `SelfSubjectAccessReview` (`kubectl auth can-i`),
//! `SelfSubjectRulesReview` (`can-i --list`), `SubjectAccessReview` and
//! `LocalSubjectAccessReview` (asking for someone else), `SelfSubjectReview`
//! (`kubectl auth whoami`) and `TokenReview`. Each is answered from the request and the
//! current policy, and never stored.

use super::Auth;
use crate::registry::Registry;
use k8s_openapi::api::authentication::v1 as authn;
use k8s_openapi::api::authorization::v1 as authz;
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{json, Value};
use skiff_api::rbac::{Attributes, UserInfo};
use skiff_api::resource::{self, ResourceInfo};
use skiff_api::ApiError;

/// Answers a review `body` POSTed to `resource` (in `namespace`, for local reviews) by
/// `user`. The reply is the review with its `status` filled in.
pub fn answer(
    auth: &Auth,
    registry: &Registry,
    user: &UserInfo,
    resource: &ResourceInfo,
    namespace: Option<&str>,
    body: Value,
) -> Result<Value, ApiError> {
    let kind = resource.kind;
    let mut reply = match *resource {
        resource::SELF_SUBJECT_ACCESS_REVIEWS => {
            let review: authz::SelfSubjectAccessReview = decode(kind, body)?;
            let status = access(
                auth,
                registry,
                user,
                &review.spec.resource_attributes,
                &review.spec.non_resource_attributes,
            )?;
            to_value(authz::SelfSubjectAccessReview {
                status: Some(status),
                ..review
            })?
        }
        resource::SUBJECT_ACCESS_REVIEWS | resource::LOCAL_SUBJECT_ACCESS_REVIEWS => {
            let local = *resource == resource::LOCAL_SUBJECT_ACCESS_REVIEWS;
            let review: authz::SubjectAccessReview = decode(kind, body)?;
            let spec = &review.spec;
            if local {
                let asked = spec
                    .resource_attributes
                    .as_ref()
                    .and_then(|a| a.namespace.as_deref());
                if spec.non_resource_attributes.is_some()
                    || asked.unwrap_or_default() != namespace.unwrap_or_default()
                {
                    return Err(ApiError::bad_request(format!(
                        "spec.resourceAttributes.namespace must match the namespace of the request ({:?})",
                        namespace.unwrap_or_default()
                    )));
                }
            }
            let subject = UserInfo {
                name: spec.user.clone().unwrap_or_default(),
                uid: spec.uid.clone().unwrap_or_default(),
                groups: spec.groups.clone().unwrap_or_default(),
                extra: spec.extra.clone().unwrap_or_default().into_iter().collect(),
            };
            if subject.name.is_empty() && subject.groups.is_empty() {
                return Err(ApiError::bad_request(
                    "at least one of spec.user and spec.groups must be set",
                ));
            }
            let status = access(
                auth,
                registry,
                &subject,
                &spec.resource_attributes,
                &spec.non_resource_attributes,
            )?;
            to_value(authz::SubjectAccessReview {
                status: Some(status),
                ..review
            })?
        }
        resource::SELF_SUBJECT_RULES_REVIEWS => {
            let review: authz::SelfSubjectRulesReview = decode(kind, body)?;
            let namespace = review.spec.namespace.clone().unwrap_or_default();
            let rules = auth.snapshot().rules_for(user, &namespace);
            let status = authz::SubjectRulesReviewStatus {
                resource_rules: rules.resource_rules.iter().map(resource_rule).collect(),
                non_resource_rules: rules
                    .non_resource_rules
                    .iter()
                    .map(non_resource_rule)
                    .collect(),
                incomplete: rules.incomplete,
                evaluation_error: rules.evaluation_error,
            };
            to_value(authz::SelfSubjectRulesReview {
                status: Some(status),
                ..review
            })?
        }
        resource::SELF_SUBJECT_REVIEWS => {
            let review: authn::SelfSubjectReview = decode(kind, body)?;
            let status = authn::SelfSubjectReviewStatus {
                user_info: Some(user_info(user)),
            };
            to_value(authn::SelfSubjectReview {
                status: Some(status),
                ..review
            })?
        }
        resource::TOKEN_REVIEWS => {
            let review: authn::TokenReview = decode(kind, body)?;
            let token = review.spec.token.clone().unwrap_or_default();
            let header = format!("Bearer {token}");
            let found = if token.is_empty() {
                None
            } else {
                auth.authenticate(registry, Some(&header)).ok().flatten()
            };
            let status = match found {
                Some(found) => authn::TokenReviewStatus {
                    authenticated: Some(true),
                    user: Some(user_info(&found)),
                    audiences: review.spec.audiences.clone(),
                    error: None,
                },
                None => authn::TokenReviewStatus {
                    authenticated: Some(false),
                    error: Some("invalid bearer token".into()),
                    ..Default::default()
                },
            };
            to_value(authn::TokenReview {
                status: Some(status),
                ..review
            })?
        }
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "{} cannot be reviewed",
                resource.plural
            )))
        }
    };
    reply["apiVersion"] = json!(resource.api_version());
    reply["kind"] = json!(kind);
    if reply.get("metadata").is_none_or(Value::is_null) {
        reply["metadata"] = json!({});
    }
    Ok(reply)
}

/// Whether `user` may do what the review's attributes describe.
fn access(
    auth: &Auth,
    registry: &Registry,
    user: &UserInfo,
    resource_attributes: &Option<authz::ResourceAttributes>,
    non_resource_attributes: &Option<authz::NonResourceAttributes>,
) -> Result<authz::SubjectAccessReviewStatus, ApiError> {
    let attributes =
        match (resource_attributes, non_resource_attributes) {
            (Some(r), None) => Attributes {
                user,
                verb: r.verb.as_deref().unwrap_or_default(),
                namespace: r.namespace.as_deref().unwrap_or_default(),
                api_group: r.group.as_deref().unwrap_or_default(),
                resource: r.resource.as_deref().unwrap_or_default(),
                subresource: r.subresource.as_deref().unwrap_or_default(),
                name: r.name.as_deref().unwrap_or_default(),
                resource_request: true,
                path: "",
            },
            (None, Some(n)) => Attributes::non_resource(
                user,
                n.verb.as_deref().unwrap_or_default(),
                n.path.as_deref().unwrap_or_default(),
            ),
            _ => return Err(ApiError::bad_request(
                "exactly one of spec.resourceAttributes and spec.nonResourceAttributes must be set",
            )),
        };
    Ok(match auth.authorize(registry, &attributes, None) {
        Ok(()) => authz::SubjectAccessReviewStatus {
            allowed: true,
            ..Default::default()
        },
        // As Kubernetes: a request no rule allows has no reason to give (the 403 message
        // is the API server's wording of a refusal, not the authorizer's).
        Err(_) => authz::SubjectAccessReviewStatus {
            allowed: false,
            ..Default::default()
        },
    })
}

fn user_info(user: &UserInfo) -> authn::UserInfo {
    authn::UserInfo {
        username: Some(user.name.clone()),
        uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
        groups: Some(user.groups.clone()),
        extra: (!user.extra.is_empty()).then(|| user.extra.clone().into_iter().collect()),
    }
}

fn resource_rule(rule: &PolicyRule) -> authz::ResourceRule {
    authz::ResourceRule {
        verbs: rule.verbs.clone(),
        api_groups: rule.api_groups.clone(),
        resources: rule.resources.clone(),
        resource_names: rule.resource_names.clone(),
    }
}

fn non_resource_rule(rule: &PolicyRule) -> authz::NonResourceRule {
    authz::NonResourceRule {
        verbs: rule.verbs.clone(),
        non_resource_urls: rule.non_resource_urls.clone(),
    }
}

fn decode<T: serde::de::DeserializeOwned>(kind: &str, body: Value) -> Result<T, ApiError> {
    serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not a valid {kind}: {e}")))
}

fn to_value<T: serde::Serialize>(review: T) -> Result<Value, ApiError> {
    serde_json::to_value(review).map_err(|e| ApiError::internal(e.to_string()))
}
