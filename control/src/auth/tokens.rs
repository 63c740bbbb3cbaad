//! Bootstrap tokens (`[a-z0-9]{6}.[a-z0-9]{16}`), as kubeadm makes them: a Secret
//! `kube-system/bootstrap-token-<id>` of type `bootstrap.kubernetes.io/token` holds the
//! secret half, an optional `expiration` and the usages; deleting the Secret revokes
//! the token. Authenticated as `system:bootstrap:<id>` in `system:bootstrappers`.

use k8s_openapi::api::core::v1::Secret;
use skiff_api::rbac::{UserInfo, ALL_AUTHENTICATED};
use std::time::Duration;

pub const BOOTSTRAP_TOKEN_SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const BOOTSTRAP_TOKEN_NAMESPACE: &str = "kube-system";
pub const BOOTSTRAP_TOKEN_SECRET_PREFIX: &str = "bootstrap-token-";
pub const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";
pub const BOOTSTRAP_USER_PREFIX: &str = "system:bootstrap:";
/// kubeadm's default token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// A token split into its public id and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for BootstrapToken {
    // The secret half never appears in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl BootstrapToken {
    /// Parses `id.secret`; anything else is not a bootstrap token.
    pub fn parse(token: &str) -> Option<BootstrapToken> {
        let (id, secret) = token.split_once('.')?;
        let valid = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        (valid(id, 6) && valid(secret, 16)).then(|| BootstrapToken {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// A new random token (about 83 bits in the secret, as kubeadm's).
    pub fn generate(random: &mut dyn FnMut() -> u32) -> BootstrapToken {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut pick = |len: usize| -> String {
            (0..len)
                .map(|_| {
                    // Rejection sampling keeps every character equally likely.
                    loop {
                        let r = random() & 0x3f;
                        if let Some(c) = ALPHABET.get(r as usize) {
                            break *c as char;
                        }
                    }
                })
                .collect()
        };
        BootstrapToken {
            id: pick(6),
            secret: pick(16),
        }
    }

    pub fn secret_name(&self) -> String {
        format!("{BOOTSTRAP_TOKEN_SECRET_PREFIX}{}", self.id)
    }

    /// The Secret that makes this token valid until `expiration` (RFC 3339), for
    /// authentication and for signing `cluster-info`, as `kubeadm token create` writes it.
    pub fn secret_object(&self, expiration: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": self.secret_name(), "namespace": BOOTSTRAP_TOKEN_NAMESPACE},
            "type": BOOTSTRAP_TOKEN_SECRET_TYPE,
            "stringData": {
                "token-id": self.id,
                "token-secret": self.secret,
                "expiration": expiration,
                "usage-bootstrap-authentication": "true",
                "usage-bootstrap-signing": "true",
            },
        })
    }

    /// `id.secret`, for the joining side.
    pub fn reveal(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

/// Why a bootstrap token was refused (logged by id only; the client sees 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("bootstrap token {0} does not exist")]
    Unknown(String),
    #[error("bootstrap token {0} does not match its secret")]
    Mismatch(String),
    #[error("bootstrap token {0} has expired")]
    Expired(String),
    #[error("bootstrap token {0} is not for authentication")]
    NotForAuthentication(String),
    #[error("bootstrap token {0} is malformed: {1}")]
    Malformed(String, String),
}

/// Authenticates `token` against its Secret (`None` when there is none), at `now`.
pub fn authenticate(
    token: &BootstrapToken,
    secret: Option<&Secret>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<UserInfo, TokenError> {
    let id = || token.id.clone();
    let secret = secret.ok_or_else(|| TokenError::Unknown(id()))?;
    if secret.type_.as_deref() != Some(BOOTSTRAP_TOKEN_SECRET_TYPE) {
        return Err(TokenError::Unknown(id()));
    }
    let field = |key: &str| -> Option<String> {
        let data = secret.data.as_ref()?.get(key)?;
        String::from_utf8(data.0.clone()).ok()
    };
    if field("token-id").as_deref() != Some(token.id.as_str()) {
        return Err(TokenError::Unknown(id()));
    }
    let stored = field("token-secret").unwrap_or_default();
    if !constant_time_eq(stored.as_bytes(), token.secret.as_bytes()) {
        return Err(TokenError::Mismatch(id()));
    }
    if let Some(expiration) = field("expiration") {
        let at = chrono::DateTime::parse_from_rfc3339(&expiration)
            .map_err(|e| TokenError::Malformed(id(), format!("expiration: {e}")))?;
        if at <= now {
            return Err(TokenError::Expired(id()));
        }
    }
    if field("usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err(TokenError::NotForAuthentication(id()));
    }
    let mut groups = vec![BOOTSTRAPPERS_GROUP.to_string()];
    for extra in field("auth-extra-groups").unwrap_or_default().split(',') {
        let extra = extra.trim();
        // As kubeadm: extra groups must stay inside the bootstrappers' namespace.
        if extra.starts_with("system:bootstrappers:") && !groups.iter().any(|g| g == extra) {
            groups.push(extra.to_string());
        }
    }
    groups.push(ALL_AUTHENTICATED.to_string());
    Ok(UserInfo {
        name: format!("{BOOTSTRAP_USER_PREFIX}{}", token.id),
        groups,
        ..UserInfo::default()
    })
}

/// Compares two secrets in time that depends only on their length.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn secret(fields: &[(&str, &str)]) -> Secret {
        Secret {
            type_: Some(BOOTSTRAP_TOKEN_SECRET_TYPE.into()),
            data: Some(
                fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn tokens_parse_only_in_kubeadm_format() {
        assert!(BootstrapToken::parse("abcdef.0123456789abcdef").is_some());
        for bad in [
            "abcdef0123456789abcdef",
            "abcde.0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcdef.0123456789abcde",
            "abcdef.0123456789abcdef.x",
            "",
        ] {
            assert!(BootstrapToken::parse(bad).is_none(), "{bad}");
        }
        let mut n = 0u32;
        let token = BootstrapToken::generate(&mut || {
            n = n.wrapping_mul(1103515245).wrapping_add(12345);
            n >> 8
        });
        assert_eq!(BootstrapToken::parse(&token.reveal()), Some(token.clone()));
        assert!(!format!("{token:?}").contains(&token.secret));
    }

    #[test]
    fn a_token_authenticates_only_while_valid() {
        let now = chrono::Utc::now();
        let later = (now + chrono::Duration::hours(1)).to_rfc3339();
        let earlier = (now - chrono::Duration::seconds(1)).to_rfc3339();
        let token = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let good = [
            ("token-id", "abcdef"),
            ("token-secret", "0123456789abcdef"),
            ("usage-bootstrap-authentication", "true"),
            (
                "auth-extra-groups",
                "system:bootstrappers:worker,system:masters",
            ),
            ("expiration", later.as_str()),
        ];
        let user = authenticate(&token, Some(&secret(&good)), now).unwrap();
        assert_eq!(user.name, "system:bootstrap:abcdef");
        assert_eq!(
            user.groups,
            [
                "system:bootstrappers",
                "system:bootstrappers:worker",
                "system:authenticated"
            ]
        );
        let mut expired = good;
        expired[4] = ("expiration", earlier.as_str());
        assert_eq!(
            authenticate(&token, Some(&secret(&expired)), now),
            Err(TokenError::Expired("abcdef".into()))
        );
        let mut wrong = good;
        wrong[1] = ("token-secret", "0123456789abcdee");
        assert_eq!(
            authenticate(&token, Some(&secret(&wrong)), now),
            Err(TokenError::Mismatch("abcdef".into()))
        );
        let mut unusable = good;
        unusable[2] = ("usage-bootstrap-authentication", "false");
        assert!(authenticate(&token, Some(&secret(&unusable)), now).is_err());
        assert_eq!(
            authenticate(&token, None, now),
            Err(TokenError::Unknown("abcdef".into()))
        );
        let mut opaque = secret(&good);
        opaque.type_ = Some("Opaque".into());
        assert!(authenticate(&token, Some(&opaque), now).is_err());
    }
}
