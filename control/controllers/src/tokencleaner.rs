//! The token cleaner (kube-controller-manager's `tokencleaner`): bootstrap-token Secrets
//! in `kube-system` whose `expiration` has passed are deleted, so an expired join token
//! is gone, not merely refused.

use super::name_of;
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use skiff_api::clock::SharedClock;
use skiff_client::informer::ObjectList;
use skiff_client::{Client, ListOptions};
use std::future::Future;
use std::time::Duration;

/// Where bootstrap tokens are kept, and their Secrets' type.
pub const TOKEN_NAMESPACE: &str = "kube-system";
pub const TOKEN_SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";

/// Whether a bootstrap-token Secret has expired at `now`. A Secret without a readable
/// expiration never expires here (the authenticator refuses malformed ones).
pub fn expired(secret: &Secret, now: DateTime<Utc>) -> bool {
    secret.type_.as_deref() == Some(TOKEN_SECRET_TYPE)
        && secret
            .data
            .as_ref()
            .and_then(|d| d.get("expiration"))
            .and_then(|v| std::str::from_utf8(&v.0).ok())
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .is_some_and(|at| at <= now)
}

/// Deletes expired bootstrap tokens every `period` until `shutdown` completes.
pub async fn run(
    client: Client,
    period: Duration,
    clock: SharedClock,
    shutdown: impl Future<Output = ()>,
) {
    let secrets = &skiff_api::resource::SECRETS;
    let options = ListOptions {
        field_selector: Some(format!("type={TOKEN_SECRET_TYPE}")),
        ..Default::default()
    };
    tokio::pin!(shutdown);
    loop {
        let listed = client
            .list_bytes(secrets, Some(TOKEN_NAMESPACE), &options)
            .await
            .ok()
            .and_then(|bytes| serde_json::from_slice::<ObjectList<Secret>>(&bytes).ok());
        let now = clock.now();
        for secret in listed.iter().flat_map(|l| &l.items) {
            if expired(secret, now) {
                let name = name_of(&secret.metadata);
                tracing::info!(secret = name, "deleting an expired bootstrap token");
                let _ = client
                    .delete(secrets, Some(TOKEN_NAMESPACE), name, "Background", None)
                    .await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = &mut shutdown => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn token(expiration: Option<&str>, type_: &str) -> Secret {
        let mut data = std::collections::BTreeMap::new();
        if let Some(at) = expiration {
            data.insert("expiration".to_string(), ByteString(at.as_bytes().to_vec()));
        }
        Secret {
            type_: Some(type_.into()),
            data: Some(data),
            ..Default::default()
        }
    }

    #[test]
    fn only_bootstrap_tokens_past_their_expiration_are_expired() {
        let now: DateTime<Utc> = "2026-12-02T12:00:00Z".parse().unwrap();
        assert!(expired(
            &token(Some("2026-12-02T11:59:59Z"), TOKEN_SECRET_TYPE),
            now
        ));
        assert!(expired(
            &token(Some("2026-12-02T12:00:00+00:00"), TOKEN_SECRET_TYPE),
            now
        ));
        assert!(!expired(
            &token(Some("2026-12-02T12:00:01Z"), TOKEN_SECRET_TYPE),
            now
        ));
        assert!(!expired(&token(None, TOKEN_SECRET_TYPE), now));
        assert!(!expired(&token(Some("yesterday"), TOKEN_SECRET_TYPE), now));
        assert!(!expired(
            &token(Some("2020-01-01T00:00:00Z"), "Opaque"),
            now
        ));
    }
}
