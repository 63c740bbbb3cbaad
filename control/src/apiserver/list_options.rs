//! The query parameters of a list (`limit`, `resourceVersion`, `resourceVersionMatch`,
//! `continue`) checked as Kubernetes checks them before any list is read.
//!
//! Decoding failures (a `limit` or `resourceVersion` that is not a number) are a 400
//! `BadRequest`, as the parameter codec's conversion error is upstream; the rules of
//! apimachinery's `ValidateListOptions` are a 422 `Invalid` on `ListOptions.meta.k8s.io`.
//! skiff serves every list whole and at the current revision, so a valid `limit` is
//! accepted and not applied (the API allows a server to return more than `limit`), and
//! because skiff never issues continue tokens, `continue` is ignored apart from the
//! `resourceVersionMatch` rule that names it.

use skiff_api::status::{ApiError, StatusDetails};
use skiff_api::validation::FieldCause;
use std::collections::HashMap;

/// Checks a non-watch list's query parameters; the list itself is always served whole at
/// the current revision, so nothing parsed here is needed afterwards.
pub fn validate(query: &HashMap<String, String>) -> Result<(), ApiError> {
    let get = |key: &str| query.get(key).map(String::as_str).unwrap_or_default();
    // Zero or negative is "no limit" upstream, so only the decoding is checked.
    let limit = get("limit");
    if !limit.is_empty() {
        limit
            .parse::<i64>()
            .map_err(|e| ApiError::bad_request(format!("invalid limit {limit:?}: {e}")))?;
    }
    let rv = get("resourceVersion");
    if !rv.is_empty() {
        rv.parse::<u64>().map_err(|e| {
            ApiError::bad_request(format!(
                "invalid resource version: resourceVersion: Invalid value: {rv:?}: {e}"
            ))
        })?;
    }
    let matching = get("resourceVersionMatch");
    let mut causes = Vec::new();
    let field = "resourceVersionMatch";
    if !matching.is_empty() {
        if rv.is_empty() {
            causes.push(FieldCause::forbidden(
                field,
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if !get("continue").is_empty() {
            causes.push(FieldCause::forbidden(
                field,
                "resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        if matching != "Exact" && matching != "NotOlderThan" {
            causes.push(FieldCause {
                    reason: "FieldValueNotSupported",
                    field: field.into(),
                    message: format!(
                        "Unsupported value: {matching:?}: supported values: \"Exact\", \"NotOlderThan\", \"\""
                    ),
                });
        }
        if matching == "Exact" && rv == "0" {
            causes.push(FieldCause::forbidden(
                field,
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    if query.contains_key("sendInitialEvents") {
        causes.push(FieldCause::forbidden(
            "sendInitialEvents",
            "sendInitialEvents is forbidden for list",
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid_list_options(causes))
    }
}

/// `errors.NewInvalid(GroupKind{meta.k8s.io, ListOptions}, "", errs)`.
fn invalid_list_options(causes: Vec<FieldCause>) -> ApiError {
    let rendered: Vec<String> = causes.iter().map(FieldCause::render).collect();
    let detail = match rendered.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let mut error = ApiError::new(
        422,
        "Invalid",
        format!("ListOptions.meta.k8s.io \"\" is invalid: {detail}"),
    );
    error.details = Some(Box::new(StatusDetails {
        name: String::new(),
        group: "meta.k8s.io".into(),
        kind: "ListOptions".into(),
        causes,
    }));
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<(), ApiError> {
        let query = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        validate(&query)
    }

    fn code(pairs: &[(&str, &str)]) -> u16 {
        parse(pairs).err().map_or(200, |e| e.code)
    }

    #[test]
    fn garbage_limit_or_resource_version_is_a_bad_request() {
        assert_eq!(code(&[("limit", "abc")]), 400);
        assert_eq!(code(&[("limit", "1.5")]), 400);
        assert_eq!(code(&[("resourceVersion", "abc")]), 400);
        assert_eq!(code(&[("resourceVersion", "-1")]), 400);
        let message = parse(&[("resourceVersion", "x")]).unwrap_err().message;
        assert!(message.contains("Invalid value"), "{message}");
    }

    /// Upstream does not validate the sign of `limit`: zero or less means "no limit".
    #[test]
    fn negative_limit_is_accepted_as_no_limit_like_kubernetes() {
        assert_eq!(code(&[("limit", "-5")]), 200);
        assert_eq!(code(&[("limit", "0")]), 200);
    }

    #[test]
    fn resource_version_match_follows_validate_list_options() {
        let invalid = |pairs: &[(&str, &str)], needle: &str| {
            let error = parse(pairs).unwrap_err();
            assert_eq!((error.code, error.reason), (422, "Invalid"), "{pairs:?}");
            assert!(error
                .message
                .starts_with("ListOptions.meta.k8s.io \"\" is invalid: "));
            assert!(error.message.contains(needle), "{}", error.message);
        };
        invalid(
            &[("resourceVersionMatch", "Exact")],
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
        );
        invalid(
            &[("resourceVersion", "5"), ("resourceVersionMatch", "Bogus")],
            "resourceVersionMatch: Unsupported value: \"Bogus\"",
        );
        invalid(
            &[("resourceVersion", "0"), ("resourceVersionMatch", "Exact")],
            "forbidden for resourceVersion \"0\"",
        );
        invalid(
            &[
                ("resourceVersion", "5"),
                ("resourceVersionMatch", "NotOlderThan"),
                ("continue", "x"),
            ],
            "forbidden when continue is provided",
        );
        invalid(
            &[("sendInitialEvents", "true")],
            "sendInitialEvents is forbidden for list",
        );
        assert_eq!(
            code(&[
                ("resourceVersion", "7"),
                ("resourceVersionMatch", "NotOlderThan")
            ]),
            200
        );
        assert_eq!(
            code(&[("resourceVersion", "7"), ("resourceVersionMatch", "Exact")]),
            200
        );
    }

    /// skiff never issues continue tokens, so one it did not issue is ignored.
    #[test]
    fn continue_without_resource_version_match_is_ignored() {
        assert_eq!(code(&[("continue", "garbage"), ("limit", "10")]), 200);
    }
}
