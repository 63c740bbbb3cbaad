//! Service-account tokens for pods' projected volumes (kubelet's token manager): the
//! agent asks the API server for a token bound to the pod (TokenRequest), keeps it, and
//! asks again once 80 % of its lifetime — or 24 hours — has passed, so the file a pod
//! reads always holds a valid token. A failed renewal keeps serving the old token while
//! it is still valid.

use serde_json::json;
use skiff_api::clock::SharedClock;
use skiff_client::Client;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// A token older than this is renewed whatever its lifetime (kubelet's `maxTTL`).
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// One token a pod's volume projects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub namespace: String,
    pub service_account: String,
    /// `None`: the API server's own audience.
    pub audience: Option<String>,
    pub expiration_seconds: i64,
    pub pod_name: String,
    pub pod_uid: String,
}

/// A token the API server issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    pub issued: SystemTime,
    pub expires: SystemTime,
}

impl IssuedToken {
    /// When this token is renewed: at 80 % of its lifetime, or at [`MAX_AGE`].
    pub fn refresh_at(&self) -> SystemTime {
        let lifetime = self.expires.duration_since(self.issued).unwrap_or_default();
        let at_80 = self.issued + lifetime.mul_f64(0.8);
        at_80.min(self.issued + MAX_AGE)
    }

    pub fn is_valid(&self, now: SystemTime) -> bool {
        now < self.expires
    }
}

/// The agent's tokens, by what they were asked for.
pub struct PodTokens {
    client: Client,
    clock: SharedClock,
    cache: Mutex<HashMap<TokenKey, IssuedToken>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl PodTokens {
    pub fn new(client: Client, clock: SharedClock) -> Self {
        PodTokens {
            client,
            clock,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The token for `key`: the kept one until it is due for renewal, else a new one
    /// (or, if asking fails, the kept one while it is still valid).
    pub async fn token(&self, key: &TokenKey) -> Result<IssuedToken, String> {
        let now = self.clock.system_time();
        let kept = lock(&self.cache).get(key).cloned();
        if let Some(kept) = kept.as_ref().filter(|t| now < t.refresh_at()) {
            return Ok(kept.clone());
        }
        match self.request(key, now).await {
            Ok(issued) => {
                lock(&self.cache).insert(key.clone(), issued.clone());
                Ok(issued)
            }
            Err(e) => match kept.filter(|t| t.is_valid(now)) {
                Some(kept) => {
                    tracing::warn!(pod = %key.pod_name, namespace = %key.namespace, error = %e, "renewing a service-account token failed; the current one is still valid");
                    Ok(kept)
                }
                None => Err(e),
            },
        }
    }

    /// Drops the tokens of a pod that is gone from the node.
    pub fn forget_pod(&self, uid: &str) {
        lock(&self.cache).retain(|key, _| key.pod_uid != uid);
    }

    async fn request(&self, key: &TokenKey, now: SystemTime) -> Result<IssuedToken, String> {
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": key.audience.iter().collect::<Vec<_>>(),
                "expirationSeconds": key.expiration_seconds,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": key.pod_name,
                    "uid": key.pod_uid,
                },
            },
        });
        let path = format!(
            "{}/token",
            Client::item_path(
                &skiff_api::resource::SERVICE_ACCOUNTS,
                Some(&key.namespace),
                &key.service_account,
            )
        );
        let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let answer = self
            .client
            .request(
                skiff_client::Method::Post,
                &path,
                Some(("application/json", bytes)),
                None,
            )
            .await
            .map_err(|e| {
                format!(
                    "requesting a token of service account {}/{}: {e}",
                    key.namespace, key.service_account
                )
            })?;
        let token = answer["status"]["token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or("the TokenRequest answer has no token")?
            .to_string();
        let expires = answer["status"]["expirationTimestamp"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(SystemTime::from)
            .ok_or("the TokenRequest answer has no expirationTimestamp")?;
        Ok(IssuedToken {
            token,
            issued: now,
            expires,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(lifetime: Duration) -> IssuedToken {
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        IssuedToken {
            token: "t".into(),
            issued,
            expires: issued + lifetime,
        }
    }

    #[test]
    fn tokens_are_renewed_at_80_percent_of_their_life_or_after_a_day() {
        let hour = issued(Duration::from_secs(3607));
        assert_eq!(
            hour.refresh_at(),
            hour.issued + Duration::from_secs_f64(3607.0 * 0.8)
        );
        let year = issued(Duration::from_secs(365 * 24 * 3600));
        assert_eq!(year.refresh_at(), year.issued + MAX_AGE);
        assert!(hour.is_valid(hour.issued + Duration::from_secs(3606)));
        assert!(!hour.is_valid(hour.expires));
    }
}
