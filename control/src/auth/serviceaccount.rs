//! Service-account tokens: bound JWTs signed with ES256, made and checked as
//! kube-apiserver's `pkg/serviceaccount` (`jwt.go`, `claims.go`) does.
//!
//! A [`TokenSigner`] holds the cluster's ECDSA P-256 signing key and issues tokens for a
//! [`ServiceAccountTokenRequest`]; a [`TokenVerifier`] holds the public keys, the accepted
//! issuers and the API audiences, and checks a presented token's form, algorithm,
//! signature, issuer, audience, validity window and subject. What needs the store (the
//! service account, pod, secret or node the token is bound to still exists with the same
//! uid) is left to the caller, which gets everything it needs in a [`VerifiedToken`].
//!
//! Only bound tokens are understood; legacy Secret-based tokens (claims such as
//! `kubernetes.io/serviceaccount/namespace`, no expiry) are refused as malformed claims.
//! Nothing here does IO: the caller reads and writes the key file.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde::{Deserialize, Serialize};
use skiff_api::rbac::{UserInfo, ALL_AUTHENTICATED};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The prefix of every service account's user name (`system:serviceaccount:<ns>:<name>`).
pub const SERVICE_ACCOUNT_USERNAME_PREFIX: &str = "system:serviceaccount:";
/// The group every service account is in.
pub const ALL_SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";
/// The prefix of the per-namespace group (`system:serviceaccounts:<ns>`).
pub const SERVICE_ACCOUNT_GROUP_PREFIX: &str = "system:serviceaccounts:";

/// The user's extra values Kubernetes sets from a token's claims
/// (`k8s.io/apiserver/pkg/authentication/serviceaccount/util.go`, `user.CredentialIDKey`).
pub const POD_NAME_KEY: &str = "authentication.kubernetes.io/pod-name";
pub const POD_UID_KEY: &str = "authentication.kubernetes.io/pod-uid";
pub const NODE_NAME_KEY: &str = "authentication.kubernetes.io/node-name";
pub const NODE_UID_KEY: &str = "authentication.kubernetes.io/node-uid";
pub const CREDENTIAL_ID_KEY: &str = "authentication.kubernetes.io/credential-id";

/// The only signature algorithm accepted or produced.
pub const ALGORITHM: &str = "ES256";
/// The clock skew allowed on `exp`, `nbf` and `iat`: go-jose's `jwt.DefaultLeeway`, which
/// kube-apiserver's validator uses through `Claims.Validate`.
pub const LEEWAY: Duration = Duration::from_secs(60);
/// Tokens longer than this are refused before any decoding. A bound token with long
/// names and several audiences is well under 2 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The shortest lifetime a token is issued for (the TokenRequest API's minimum).
pub const MIN_TOKEN_EXPIRATION: Duration = Duration::from_secs(10 * 60);
/// The lifetime a TokenRequest gets when it asks for none (Kubernetes' default).
pub const DEFAULT_TOKEN_EXPIRATION: Duration = Duration::from_secs(3600);
/// The longest lifetime a token is issued for unless configured otherwise.
pub const DEFAULT_MAX_TOKEN_EXPIRATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The DER of a SubjectPublicKeyInfo for a P-256 key up to the key itself:
/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) }.
/// The 65-byte uncompressed point follows.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// An uncompressed P-256 point: 0x04, then x and y of 32 bytes each.
const P256_POINT_LEN: usize = 65;
/// ES256 signatures are r || s, 32 bytes each (RFC 7518 §3.4).
const SIGNATURE_LEN: usize = 64;

/// Why a token could not be issued or was refused. No variant carries the token's text,
/// so these are safe to log; claim values appear only after the signature was verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is {len} bytes, more than the {max} accepted")]
    TooLarge { len: usize, max: usize },
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's algorithm {0} is not accepted, only ES256")]
    UnsupportedAlgorithm(String),
    #[error("the token names a signing key that is not known")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token's claims are invalid: {0}")]
    InvalidClaims(&'static str),
    #[error("the token's issuer {0:?} is not accepted")]
    WrongIssuer(String),
    #[error("the token is not for any audience of this API server")]
    NoAudienceOverlap,
    #[error("service account token has expired")]
    Expired,
    #[error("service account token is not valid yet")]
    NotYetValid,
    #[error("service account token is issued in the future")]
    IssuedInTheFuture,
    #[error("the token's subject does not name its service account")]
    SubjectMismatch,
    #[error("the signing key is not usable: {0}")]
    InvalidKey(String),
    #[error("cannot issue a token: {0}")]
    InvalidRequest(&'static str),
    #[error("cannot sign the token")]
    Signing,
    #[error("the clock is before 1970 or too far in the future")]
    Clock,
}

/// A reference to a named object by name and uid, as the `kubernetes.io` claim holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

impl ObjectRef {
    pub fn new(name: impl Into<String>, uid: impl Into<String>) -> ObjectRef {
        ObjectRef {
            name: name.into(),
            uid: uid.into(),
        }
    }
}

/// The private `kubernetes.io` claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
    /// Seconds since the epoch after which use of the token is reported as stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnafter: Option<i64>,
}

/// A token's claims, as Kubernetes writes them (times are seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// RFC 7519 allows a single string; Kubernetes writes an array, and so do we.
    #[serde(deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub iss: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
    pub nbf: i64,
    pub sub: String,
}

/// What a token is requested for (the parts of a TokenRequest the signer needs, with
/// the bound objects already looked up by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountTokenRequest {
    pub namespace: String,
    pub service_account: ObjectRef,
    pub audiences: Vec<String>,
    /// Used as given; pass it through [`clamp_expiration`] first.
    pub expiration: Duration,
    pub pod: Option<ObjectRef>,
    pub node: Option<ObjectRef>,
    /// Written as `warnafter` (issue time plus this), for tokens whose lifetime was
    /// extended beyond what was asked.
    pub warn_after: Option<Duration>,
}

/// The lifetime to issue a token for: at least [`MIN_TOKEN_EXPIRATION`], at most `max`
/// (itself never below the minimum). Kubernetes refuses a TokenRequest asking for less
/// than ten minutes at validation and shortens one asking for more than the maximum;
/// this raises the former so internal callers cannot mint short-lived surprises.
pub fn clamp_expiration(requested: Duration, max: Duration) -> Duration {
    requested
        .max(MIN_TOKEN_EXPIRATION)
        .min(max.max(MIN_TOKEN_EXPIRATION))
}

/// A fresh random token id (a v4 UUID, as Kubernetes' `uuid.NewString`).
pub fn new_jti() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The user name of a service account (Kubernetes' `MakeUsername`).
pub fn username(namespace: &str, name: &str) -> String {
    format!("{SERVICE_ACCOUNT_USERNAME_PREFIX}{namespace}:{name}")
}

impl Claims {
    /// The claims of a token for `request`, issued by `issuer` at `now` (truncated to the
    /// second, as go-jose's `NumericDate` is).
    pub fn for_request(
        issuer: &str,
        request: &ServiceAccountTokenRequest,
        now: SystemTime,
        jti: &str,
    ) -> Result<Claims, TokenError> {
        let valid_name = |s: &str| !s.is_empty() && !s.contains(':');
        if issuer.is_empty() {
            return Err(TokenError::InvalidRequest("the issuer is empty"));
        }
        if !valid_name(&request.namespace) || !valid_name(&request.service_account.name) {
            return Err(TokenError::InvalidRequest(
                "the namespace and service account name must be non-empty and free of ':'",
            ));
        }
        if request.audiences.is_empty() || request.audiences.iter().any(String::is_empty) {
            return Err(TokenError::InvalidRequest(
                "a token needs at least one audience, none of them empty",
            ));
        }
        let bound = [&request.pod, &request.node];
        if bound
            .iter()
            .any(|r| r.as_ref().is_some_and(|r| r.name.is_empty()))
        {
            return Err(TokenError::InvalidRequest("a bound object needs a name"));
        }
        let now = unix_seconds(now)?;
        let after = |d: Duration| {
            i64::try_from(d.as_secs())
                .ok()
                .and_then(|s| now.checked_add(s))
                .ok_or(TokenError::InvalidRequest("the lifetime is too long"))
        };
        let exp = after(request.expiration)?;
        let warnafter = request.warn_after.map(after).transpose()?;
        Ok(Claims {
            aud: request.audiences.clone(),
            exp,
            iat: now,
            iss: issuer.to_string(),
            jti: jti.to_string(),
            kubernetes: KubernetesClaims {
                namespace: request.namespace.clone(),
                serviceaccount: request.service_account.clone(),
                pod: request.pod.clone(),
                secret: None,
                node: request.node.clone(),
                warnafter,
            },
            nbf: now,
            sub: username(&request.namespace, &request.service_account.name),
        })
    }
}

/// A public key tokens are verified with, and its key id.
#[derive(Clone, PartialEq, Eq)]
pub struct VerificationKey {
    /// The uncompressed point (0x04 || x || y).
    point: Vec<u8>,
    kid: String,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    /// From an uncompressed P-256 point (what ring's `public_key()` gives).
    pub fn from_uncompressed_point(point: &[u8]) -> Result<VerificationKey, TokenError> {
        if point.len() != P256_POINT_LEN || point.first() != Some(&0x04) {
            return Err(TokenError::InvalidKey(
                "not an uncompressed P-256 public key".to_string(),
            ));
        }
        let mut key = VerificationKey {
            point: point.to_vec(),
            kid: String::new(),
        };
        key.kid =
            URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &key.spki_der()));
        Ok(key)
    }

    /// From the DER of a P-256 SubjectPublicKeyInfo (a `PUBLIC KEY` PEM's content).
    pub fn from_spki_der(der: &[u8]) -> Result<VerificationKey, TokenError> {
        match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) => VerificationKey::from_uncompressed_point(point),
            None => Err(TokenError::InvalidKey(
                "not a P-256 SubjectPublicKeyInfo".to_string(),
            )),
        }
    }

    /// From a `-----BEGIN PUBLIC KEY-----` PEM block holding a P-256 key.
    pub fn from_public_key_pem(pem: &str) -> Result<VerificationKey, TokenError> {
        let der = pem_block(pem, "PUBLIC KEY")
            .ok_or_else(|| TokenError::InvalidKey("no PUBLIC KEY PEM block".to_string()))?;
        VerificationKey::from_spki_der(&der)
    }

    /// The key id: base64url of the SHA-256 of the SubjectPublicKeyInfo DER
    /// (Kubernetes' `keyIDFromPublicKey`).
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// The DER of the SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Vec<u8> {
        let mut der = P256_SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.point);
        der
    }

    /// The key as a JWK (RFC 7517), for the OIDC discovery key set.
    pub fn jwk(&self) -> serde_json::Value {
        let coordinate = |range: std::ops::Range<usize>| {
            URL_SAFE_NO_PAD.encode(self.point.get(range).unwrap_or_default())
        };
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": coordinate(1..33),
            "y": coordinate(33..65),
            "kid": self.kid,
            "use": "sig",
            "alg": ALGORITHM,
        })
    }
}

/// The cluster's service-account signing key.
pub struct TokenSigner {
    key_pair: EcdsaKeyPair,
    verification_key: VerificationKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for TokenSigner {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.verification_key.kid)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A new random key, and its PKCS#8 PEM for the caller to keep (mode 0600).
    pub fn generate() -> Result<(TokenSigner, String), TokenError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| TokenError::InvalidKey("cannot generate a key".to_string()))?;
        let signer = TokenSigner::from_pkcs8_der(pkcs8.as_ref())?;
        Ok((signer, pem_encode("PRIVATE KEY", pkcs8.as_ref())))
    }

    /// From an unencrypted PKCS#8 P-256 key that includes its public key (what ring,
    /// Go's `x509.MarshalPKCS8PrivateKey` and `openssl genpkey` write).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<TokenSigner, TokenError> {
        let rng = SystemRandom::new();
        let key_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| TokenError::InvalidKey(format!("not a P-256 PKCS#8 key: {e}")))?;
        let verification_key =
            VerificationKey::from_uncompressed_point(key_pair.public_key().as_ref())?;
        Ok(TokenSigner {
            key_pair,
            verification_key,
            rng,
        })
    }

    /// From a `-----BEGIN PRIVATE KEY-----` PEM block.
    pub fn from_pkcs8_pem(pem: &str) -> Result<TokenSigner, TokenError> {
        if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
            return Err(TokenError::InvalidKey(
                "SEC1 keys are not supported; convert with `openssl pkcs8 -topk8 -nocrypt`"
                    .to_string(),
            ));
        }
        let der = pem_block(pem, "PRIVATE KEY")
            .ok_or_else(|| TokenError::InvalidKey("no PRIVATE KEY PEM block".to_string()))?;
        TokenSigner::from_pkcs8_der(&der)
    }

    pub fn key_id(&self) -> &str {
        self.verification_key.key_id()
    }

    /// The public half, for a [`TokenVerifier`].
    pub fn verification_key(&self) -> VerificationKey {
        self.verification_key.clone()
    }

    /// The public key as a JWK, for the OIDC discovery endpoint.
    pub fn public_key_jwk(&self) -> serde_json::Value {
        self.verification_key.jwk()
    }

    /// A token for `request`, issued by `issuer` at `now` with id `jti`.
    pub fn issue(
        &self,
        issuer: &str,
        request: &ServiceAccountTokenRequest,
        now: SystemTime,
        jti: &str,
    ) -> Result<String, TokenError> {
        self.sign_claims(&Claims::for_request(issuer, request, now, jti)?)
    }

    /// Signs `claims` as they are. The header is `{"alg":"ES256","kid":...}` without
    /// `typ`, as go-jose writes it for kube-apiserver.
    pub fn sign_claims(&self, claims: &Claims) -> Result<String, TokenError> {
        let header = Header {
            alg: ALGORITHM.to_string(),
            kid: Some(self.key_id().to_string()),
            typ: None,
            crit: None,
        };
        let header = serde_json::to_vec(&header).map_err(|_| TokenError::Signing)?;
        let payload = serde_json::to_vec(claims).map_err(|_| TokenError::Signing)?;
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(payload));
        let signature = self
            .key_pair
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| TokenError::Signing)?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        Ok(token)
    }
}

/// A token whose form, signature, issuer, audience, time window and subject were
/// checked. Still to be checked by the caller against the store, as Kubernetes'
/// validator does: the service account exists with `service_account.uid`; a bound pod
/// or secret exists with its uid; a node, when bound without a pod, exists with its uid
/// (a pod-bound token's node is informational); none of them was deleted more than
/// [`LEEWAY`] ago.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub issuer: String,
    pub namespace: String,
    pub service_account: ObjectRef,
    pub pod: Option<ObjectRef>,
    pub secret: Option<ObjectRef>,
    pub node: Option<ObjectRef>,
    /// The token's audiences that are also this API server's.
    pub audiences: Vec<String>,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    pub warn_after: Option<SystemTime>,
    pub jti: String,
}

impl VerifiedToken {
    /// The credential id Kubernetes records in the user's extra values (`JTI=<jti>`),
    /// empty when the token has no id.
    pub fn credential_id(&self) -> String {
        if self.jti.is_empty() {
            String::new()
        } else {
            format!("JTI={}", self.jti)
        }
    }

    /// The user the token authenticates, as Kubernetes' `ServiceAccountInfo.UserInfo`
    /// makes it plus `system:authenticated` (which kube-apiserver's authenticator chain
    /// adds). Node extras are only meaningful once the caller checked the binding.
    pub fn user_info(&self) -> UserInfo {
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut set = |key: &str, value: &str| {
            extra.insert(key.to_string(), vec![value.to_string()]);
        };
        if let Some(pod) = self
            .pod
            .as_ref()
            .filter(|p| !p.name.is_empty() && !p.uid.is_empty())
        {
            set(POD_NAME_KEY, &pod.name);
            set(POD_UID_KEY, &pod.uid);
        }
        let credential_id = self.credential_id();
        if !credential_id.is_empty() {
            set(CREDENTIAL_ID_KEY, &credential_id);
        }
        if let Some(node) = self.node.as_ref().filter(|n| !n.name.is_empty()) {
            set(NODE_NAME_KEY, &node.name);
            if !node.uid.is_empty() {
                set(NODE_UID_KEY, &node.uid);
            }
        }
        UserInfo {
            name: username(&self.namespace, &self.service_account.name),
            uid: self.service_account.uid.clone(),
            groups: vec![
                ALL_SERVICE_ACCOUNTS_GROUP.to_string(),
                format!("{SERVICE_ACCOUNT_GROUP_PREFIX}{}", self.namespace),
                ALL_AUTHENTICATED.to_string(),
            ],
            extra,
        }
    }
}

/// Checks service-account tokens against a set of public keys.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    keys: Vec<VerificationKey>,
    issuers: Vec<String>,
    api_audiences: Vec<String>,
}

impl TokenVerifier {
    /// Tokens signed by any of `keys`, issued by any of `issuers`, for at least one of
    /// `api_audiences`. Unlike Kubernetes, where no API audiences means no audience
    /// check, an empty `api_audiences` accepts no token.
    pub fn new(
        keys: Vec<VerificationKey>,
        issuers: Vec<String>,
        api_audiences: Vec<String>,
    ) -> TokenVerifier {
        TokenVerifier {
            keys,
            issuers,
            api_audiences,
        }
    }

    /// Checks `token` at `now`. The signature is verified before the claims are read,
    /// so nothing an attacker writes in the payload is looked at unless we signed it.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<VerifiedToken, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge {
                len: token.len(),
                max: MAX_TOKEN_BYTES,
            });
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("a JWT has exactly three parts"));
        };
        if header_b64.is_empty() || payload_b64.is_empty() {
            return Err(TokenError::Malformed("the header or payload is empty"));
        }

        let header = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| TokenError::Malformed("the header is not base64url"))?;
        let header: Header =
            json_object(&header).ok_or(TokenError::Malformed("the header is not a JWS header"))?;
        // Only the algorithm our keys are for: no `none`, no HMAC with a public key as
        // the secret, no other curve.
        if header.alg != ALGORITHM {
            return Err(TokenError::UnsupportedAlgorithm(printable(&header.alg)));
        }
        // RFC 7515 §4.1.11: extensions we do not understand must not be ignored.
        if header.crit.is_some() {
            return Err(TokenError::Malformed(
                "the header has critical extensions, which are not supported",
            ));
        }
        // Keys embedded in the header (`jwk`, `jku`, `x5c`) are never used.
        let candidates: Vec<&VerificationKey> = match &header.kid {
            Some(kid) => self.keys.iter().filter(|k| &k.kid == kid).collect(),
            None => self.keys.iter().collect(),
        };
        if candidates.is_empty() {
            return Err(TokenError::UnknownKey);
        }

        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| TokenError::Malformed("the signature is not base64url"))?;
        if signature.len() != SIGNATURE_LEN {
            return Err(TokenError::BadSignature);
        }
        // The signing input is the two parts exactly as sent.
        let signed_len = header_b64.len() + 1 + payload_b64.len();
        let signing_input = token
            .get(..signed_len)
            .ok_or(TokenError::Malformed("the token is cut short"))?;
        let verified = candidates.iter().any(|key| {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key.point)
                .verify(signing_input.as_bytes(), &signature)
                .is_ok()
        });
        if !verified {
            return Err(TokenError::BadSignature);
        }

        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenError::Malformed("the payload is not base64url"))?;
        let claims: Claims = json_object(&payload).ok_or(TokenError::InvalidClaims(
            "the payload is not a bound service account token",
        ))?;
        self.check_claims(claims, now)
    }

    fn check_claims(&self, claims: Claims, now: SystemTime) -> Result<VerifiedToken, TokenError> {
        if !self.issuers.contains(&claims.iss) {
            return Err(TokenError::WrongIssuer(claims.iss));
        }

        // go-jose's ValidateWithLeeway: the leeway widens the window on both sides.
        let now = unix_seconds(now)?;
        let leeway = LEEWAY.as_secs() as i64;
        if now.saturating_add(leeway) < claims.nbf {
            return Err(TokenError::NotYetValid);
        }
        if now.saturating_sub(leeway) > claims.exp {
            return Err(TokenError::Expired);
        }
        if now.saturating_add(leeway) < claims.iat {
            return Err(TokenError::IssuedInTheFuture);
        }

        let audiences: Vec<String> = claims
            .aud
            .iter()
            .filter(|a| self.api_audiences.contains(a))
            .cloned()
            .collect();
        if audiences.is_empty() {
            return Err(TokenError::NoAudienceOverlap);
        }

        let kubernetes = claims.kubernetes;
        if kubernetes.namespace.is_empty() || kubernetes.serviceaccount.name.is_empty() {
            return Err(TokenError::InvalidClaims(
                "the token names no namespace or service account",
            ));
        }
        if claims.sub != username(&kubernetes.namespace, &kubernetes.serviceaccount.name) {
            return Err(TokenError::SubjectMismatch);
        }

        let time = |seconds: i64| {
            u64::try_from(seconds)
                .ok()
                .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
                .ok_or(TokenError::InvalidClaims("a time is out of range"))
        };
        Ok(VerifiedToken {
            issuer: claims.iss,
            namespace: kubernetes.namespace,
            service_account: kubernetes.serviceaccount,
            pod: kubernetes.pod,
            secret: kubernetes.secret,
            node: kubernetes.node,
            audiences,
            issued_at: time(claims.iat)?,
            expires_at: time(claims.exp)?,
            warn_after: kubernetes.warnafter.map(time).transpose()?,
            jti: claims.jti,
        })
    }
}

/// The JWS protected header fields we read or write.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crit: Option<serde_json::Value>,
}

/// `aud` as an array, or a single string (RFC 7519 §4.1.3).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

/// `json` read as a `T`, which it must hold as an object. serde would also fill a
/// struct from an array (`["ES256"]`); going through the object form keeps its
/// refusal of duplicate keys, which a `Value` would silently resolve.
fn json_object<T: serde::de::DeserializeOwned>(json: &[u8]) -> Option<T> {
    if json.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// Seconds since the epoch, truncated.
fn unix_seconds(at: SystemTime) -> Result<i64, TokenError> {
    at.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .ok_or(TokenError::Clock)
}

/// An attacker-chosen header value fit for an error message: short names as they are,
/// anything else replaced.
fn printable(value: &str) -> String {
    let plain = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain && value.len() <= 16 {
        format!("{value:?}")
    } else {
        "(unrecognised)".to_string()
    }
}

/// The content of the first `label` PEM block in `pem`.
fn pem_block(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let rest = pem.get(start..)?;
    let body = rest.get(..rest.find(&end)?)?;
    let body: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(body).ok()
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let mut pem = format!("-----BEGIN {label}-----\n");
    for (i, c) in STANDARD.encode(der).chars().enumerate() {
        if i > 0 && i % 64 == 0 {
            pem.push('\n');
        }
        pem.push(c);
    }
    pem.push_str(&format!("\n-----END {label}-----\n"));
    pem
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData as _;

    const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
    const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    const T0: u64 = 1_700_000_000;

    fn request() -> ServiceAccountTokenRequest {
        ServiceAccountTokenRequest {
            namespace: "default".into(),
            service_account: ObjectRef::new("builder", "sa-uid-1"),
            audiences: vec![API_AUDIENCE.into(), "vault".into()],
            expiration: DEFAULT_TOKEN_EXPIRATION,
            pod: None,
            node: None,
            warn_after: None,
        }
    }

    fn signer() -> TokenSigner {
        TokenSigner::generate().unwrap().0
    }

    fn verifier(signer: &TokenSigner) -> TokenVerifier {
        TokenVerifier::new(
            vec![signer.verification_key()],
            vec!["https://old.example".into(), ISSUER.into()],
            vec![API_AUDIENCE.into()],
        )
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token from raw header and payload JSON, signed with `signer`'s key.
    fn sign_raw(signer: &TokenSigner, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let signature = signer.key_pair.sign(&signer.rng, input.as_bytes()).unwrap();
        format!("{input}.{}", b64(signature.as_ref()))
    }

    fn payload_json(token: &str) -> String {
        let payload = token.split('.').nth(1).unwrap();
        String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    #[test]
    fn an_issued_token_verifies_to_its_service_account() {
        let signer = signer();
        let token = signer.issue(ISSUER, &request(), at(T0), "jti-1").unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg": "ES256", "kid": signer.key_id()})
        );
        let claims: serde_json::Value = serde_json::from_str(&payload_json(&token)).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({
                "aud": [API_AUDIENCE, "vault"],
                "exp": T0 + 3600,
                "iat": T0,
                "nbf": T0,
                "iss": ISSUER,
                "jti": "jti-1",
                "sub": "system:serviceaccount:default:builder",
                "kubernetes.io": {
                    "namespace": "default",
                    "serviceaccount": {"name": "builder", "uid": "sa-uid-1"},
                },
            })
        );

        let verified = verifier(&signer).verify(&token, at(T0 + 10)).unwrap();
        assert_eq!(verified.namespace, "default");
        assert_eq!(
            verified.service_account,
            ObjectRef::new("builder", "sa-uid-1")
        );
        assert_eq!(verified.audiences, [API_AUDIENCE]);
        assert_eq!(verified.issued_at, at(T0));
        assert_eq!(verified.expires_at, at(T0 + 3600));
        assert_eq!((&verified.pod, &verified.node), (&None, &None));
        assert_eq!(verified.credential_id(), "JTI=jti-1");
    }

    #[test]
    fn a_pod_bound_token_carries_its_pod_and_node_into_the_user() {
        let signer = signer();
        let mut bound = request();
        bound.pod = Some(ObjectRef::new("web-0", "pod-uid"));
        bound.node = Some(ObjectRef::new("node-a", "node-uid"));
        bound.warn_after = Some(Duration::from_secs(3607));
        let token = signer.issue(ISSUER, &bound, at(T0), "abc").unwrap();
        let verified = verifier(&signer).verify(&token, at(T0)).unwrap();
        assert_eq!(verified.pod, Some(ObjectRef::new("web-0", "pod-uid")));
        assert_eq!(verified.node, Some(ObjectRef::new("node-a", "node-uid")));
        assert_eq!(verified.warn_after, Some(at(T0 + 3607)));

        let user = verified.user_info();
        assert_eq!(user.name, "system:serviceaccount:default:builder");
        assert_eq!(user.uid, "sa-uid-1");
        assert_eq!(
            user.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:default",
                "system:authenticated"
            ]
        );
        let extra = |k: &str| user.extra.get(k).cloned().unwrap_or_default();
        assert_eq!(extra(POD_NAME_KEY), ["web-0"]);
        assert_eq!(extra(POD_UID_KEY), ["pod-uid"]);
        assert_eq!(extra(NODE_NAME_KEY), ["node-a"]);
        assert_eq!(extra(NODE_UID_KEY), ["node-uid"]);
        assert_eq!(extra(CREDENTIAL_ID_KEY), ["JTI=abc"]);

        // An unbound token without an id has no extra values at all.
        let plain = signer.issue(ISSUER, &request(), at(T0), "");
        let plain = verifier(&signer).verify(&plain.unwrap(), at(T0)).unwrap();
        assert!(plain.user_info().extra.is_empty());
    }

    #[test]
    fn a_tampered_payload_or_signature_is_refused() {
        let signer = signer();
        let verifier = verifier(&signer);
        let token = signer.issue(ISSUER, &request(), at(T0), "j").unwrap();
        let parts: Vec<&str> = token.split('.').collect();

        let forged = payload_json(&token).replace("\"default\"", "\"kube-system\"");
        let forged = format!("{}.{}.{}", parts[0], b64(forged.as_bytes()), parts[2]);
        assert_eq!(
            verifier.verify(&forged, at(T0)),
            Err(TokenError::BadSignature)
        );

        let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        signature[10] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], b64(&signature));
        assert_eq!(
            verifier.verify(&flipped, at(T0)),
            Err(TokenError::BadSignature)
        );

        let short = format!("{}.{}.{}", parts[0], parts[1], b64(&signature[..63]));
        assert_eq!(
            verifier.verify(&short, at(T0)),
            Err(TokenError::BadSignature)
        );
        let empty = format!("{}.{}.", parts[0], parts[1]);
        assert_eq!(
            verifier.verify(&empty, at(T0)),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn a_token_signed_by_another_key_is_refused() {
        let ours = signer();
        let theirs = signer();
        let verifier = verifier(&ours);
        let token = theirs.issue(ISSUER, &request(), at(T0), "j").unwrap();
        assert_eq!(verifier.verify(&token, at(T0)), Err(TokenError::UnknownKey));

        // Claiming our key id does not help.
        let payload = payload_json(&token);
        let header = format!(r#"{{"alg":"ES256","kid":"{}"}}"#, ours.key_id());
        let token = sign_raw(&theirs, &header, &payload);
        assert_eq!(
            verifier.verify(&token, at(T0)),
            Err(TokenError::BadSignature)
        );

        // Nor does leaving the key id out.
        let token = sign_raw(&theirs, r#"{"alg":"ES256"}"#, &payload);
        assert_eq!(
            verifier.verify(&token, at(T0)),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn without_a_key_id_every_key_is_tried() {
        let old = signer();
        let new = signer();
        let verifier = TokenVerifier::new(
            vec![old.verification_key(), new.verification_key()],
            vec![ISSUER.into()],
            vec![API_AUDIENCE.into()],
        );
        let payload = payload_json(&new.issue(ISSUER, &request(), at(T0), "j").unwrap());
        let token = sign_raw(&new, r#"{"alg":"ES256","typ":"JWT"}"#, &payload);
        assert!(verifier.verify(&token, at(T0)).is_ok());
        let token = old.issue(ISSUER, &request(), at(T0), "j").unwrap();
        assert!(verifier.verify(&token, at(T0)).is_ok());
    }

    #[test]
    fn alg_none_is_refused() {
        let signer = signer();
        let payload = payload_json(&signer.issue(ISSUER, &request(), at(T0), "j").unwrap());
        for header in [
            r#"{"alg":"none"}"#.to_string(),
            r#"{"alg":"None"}"#.to_string(),
            format!(r#"{{"alg":"none","kid":"{}"}}"#, signer.key_id()),
        ] {
            let token = format!("{}.{}.", b64(header.as_bytes()), b64(payload.as_bytes()));
            assert!(
                matches!(
                    verifier(&signer).verify(&token, at(T0)),
                    Err(TokenError::UnsupportedAlgorithm(_))
                ),
                "{header}"
            );
        }
    }

    #[test]
    fn hs256_with_the_public_key_as_secret_is_refused() {
        let signer = signer();
        let verifier = verifier(&signer);
        let payload = payload_json(&signer.issue(ISSUER, &request(), at(T0), "j").unwrap());
        let key = signer.verification_key();
        let spki_pem = pem_encode("PUBLIC KEY", &key.spki_der());
        for secret in [key.point.clone(), key.spki_der(), spki_pem.into_bytes()] {
            for alg in [
                "HS256", "HS384", "ES384", "ES512", "RS256", "PS256", "EdDSA", "es256",
            ] {
                let header = format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, key.key_id());
                let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
                let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
                let tag = ring::hmac::sign(&hmac, input.as_bytes());
                let token = format!("{input}.{}", b64(tag.as_ref()));
                assert_eq!(
                    verifier.verify(&token, at(T0)),
                    Err(TokenError::UnsupportedAlgorithm(format!("{alg:?}"))),
                );
            }
        }
    }

    #[test]
    fn headers_with_tricks_are_refused() {
        let signer = signer();
        let verifier = verifier(&signer);
        let payload = payload_json(&signer.issue(ISSUER, &request(), at(T0), "j").unwrap());
        for header in [
            // A second `alg` a lenient parser might take instead.
            r#"{"alg":"ES256","alg":"none"}"#,
            r#"{"alg":"ES256","crit":["exp"],"exp":1}"#,
            r#"{"kid":"x"}"#,
            r#"["ES256"]"#,
            r#"{"alg":["ES256"]}"#,
        ] {
            let token = sign_raw(&signer, header, &payload);
            assert!(verifier.verify(&token, at(T0)).is_err(), "{header}");
        }
        // A header key we ignore is fine; an embedded key is never used.
        let header = r#"{"alg":"ES256","jwk":{"kty":"EC"},"cty":"JWT"}"#;
        assert!(verifier
            .verify(&sign_raw(&signer, header, &payload), at(T0))
            .is_ok());
    }

    #[test]
    fn a_wrong_issuer_or_audience_is_refused() {
        let signer = signer();
        let verifier = verifier(&signer);
        let token = signer
            .issue("https://evil.example", &request(), at(T0), "j")
            .unwrap();
        assert_eq!(
            verifier.verify(&token, at(T0)),
            Err(TokenError::WrongIssuer("https://evil.example".into()))
        );
        let token = signer
            .issue("https://old.example", &request(), at(T0), "j")
            .unwrap();
        assert!(verifier.verify(&token, at(T0)).is_ok());

        let mut other = request();
        other.audiences = vec!["vault".into(), "https://kubernetes.default.svc".into()];
        let token = signer.issue(ISSUER, &other, at(T0), "j").unwrap();
        assert_eq!(
            verifier.verify(&token, at(T0)),
            Err(TokenError::NoAudienceOverlap)
        );

        let nobody =
            TokenVerifier::new(vec![signer.verification_key()], vec![ISSUER.into()], vec![]);
        let token = signer.issue(ISSUER, &request(), at(T0), "j").unwrap();
        assert_eq!(
            nobody.verify(&token, at(T0)),
            Err(TokenError::NoAudienceOverlap)
        );
    }

    #[test]
    fn the_validity_window_has_a_minute_of_leeway() {
        let signer = signer();
        let verifier = verifier(&signer);
        let token = signer.issue(ISSUER, &request(), at(T0), "j").unwrap();
        let exp = T0 + 3600;
        assert!(verifier.verify(&token, at(exp + 30)).is_ok());
        assert!(verifier.verify(&token, at(exp + 60)).is_ok());
        assert_eq!(
            verifier.verify(&token, at(exp + 61)),
            Err(TokenError::Expired)
        );
        assert!(verifier.verify(&token, at(T0 - 60)).is_ok());
        assert_eq!(
            verifier.verify(&token, at(T0 - 61)),
            Err(TokenError::NotYetValid)
        );

        let mut claims = Claims::for_request(ISSUER, &request(), at(T0), "j").unwrap();
        claims.iat = T0 as i64 + 600;
        let token = signer.sign_claims(&claims).unwrap();
        assert_eq!(
            verifier.verify(&token, at(T0)),
            Err(TokenError::IssuedInTheFuture)
        );
    }

    #[test]
    fn the_subject_must_name_the_service_account() {
        let signer = signer();
        let verifier = verifier(&signer);
        let mut claims = Claims::for_request(ISSUER, &request(), at(T0), "j").unwrap();
        claims.sub = "system:serviceaccount:kube-system:builder".into();
        let token = signer.sign_claims(&claims).unwrap();
        assert_eq!(
            verifier.verify(&token, at(T0)),
            Err(TokenError::SubjectMismatch)
        );

        let mut claims = Claims::for_request(ISSUER, &request(), at(T0), "j").unwrap();
        claims.kubernetes.namespace.clear();
        claims.sub = "system:serviceaccount::builder".into();
        let token = signer.sign_claims(&claims).unwrap();
        assert!(matches!(
            verifier.verify(&token, at(T0)),
            Err(TokenError::InvalidClaims(_))
        ));

        // A legacy Secret-based token's claims are not understood.
        let legacy = r#"{"iss":"kubernetes/serviceaccount","sub":"system:serviceaccount:default:builder","kubernetes.io/serviceaccount/namespace":"default"}"#;
        let token = sign_raw(&signer, r#"{"alg":"ES256"}"#, legacy);
        assert!(matches!(
            verifier.verify(&token, at(T0)),
            Err(TokenError::InvalidClaims(_))
        ));
    }

    #[test]
    fn a_single_string_audience_is_understood() {
        let signer = signer();
        let payload = payload_json(&signer.issue(ISSUER, &request(), at(T0), "j").unwrap());
        let mut value: serde_json::Value = serde_json::from_str(&payload).unwrap();
        value["aud"] = serde_json::Value::from(API_AUDIENCE);
        let token = sign_raw(&signer, r#"{"alg":"ES256"}"#, &value.to_string());
        let verified = verifier(&signer).verify(&token, at(T0)).unwrap();
        assert_eq!(verified.audiences, [API_AUDIENCE]);
    }

    /// Every way a token can be broken, with the error it gives.
    fn broken_tokens(signer: &TokenSigner) -> Vec<(String, TokenError)> {
        let good = signer.issue(ISSUER, &request(), at(T0), "j").unwrap();
        let parts: Vec<&str> = good.split('.').collect();
        let malformed = |s: &str| (s.to_string(), TokenError::Malformed(""));
        vec![
            malformed(""),
            malformed("."),
            malformed(".."),
            malformed(&format!("{}.{}", parts[0], parts[1])),
            malformed(&format!("{good}.{}", parts[2])),
            malformed(&format!("{good}.")),
            malformed(&format!("!!!.{}.{}", parts[1], parts[2])),
            malformed(&format!("{}=.{}.{}", parts[0], parts[1], parts[2])),
            malformed(&format!(" {good}")),
            malformed(&format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2])),
            malformed(&format!(
                "{}.{}.{}",
                b64(&[0xff, 0xfe, 0x00]),
                parts[1],
                parts[2]
            )),
            malformed(&format!("{}.{}.%%%", parts[0], parts[1])),
            malformed("a.b.c"),
            (
                sign_raw(signer, r#"{"alg":"ES256"}"#, "not json"),
                TokenError::InvalidClaims(""),
            ),
            (
                sign_raw(signer, r#"{"alg":"ES256"}"#, "{}"),
                TokenError::InvalidClaims(""),
            ),
            (
                sign_raw(
                    signer,
                    r#"{"alg":"ES256"}"#,
                    r#"[["a"],1,1,"i","",{},1,"s"]"#,
                ),
                TokenError::InvalidClaims(""),
            ),
            (
                format!("{}.{}.{}", parts[0], "A".repeat(MAX_TOKEN_BYTES), parts[2]),
                TokenError::TooLarge {
                    len: 0,
                    max: MAX_TOKEN_BYTES,
                },
            ),
        ]
    }

    #[test]
    fn malformed_tokens_are_errors_not_panics() {
        let signer = signer();
        let verifier = verifier(&signer);
        for (token, expected) in broken_tokens(&signer) {
            let got = verifier.verify(&token, at(T0));
            let same_kind = matches!(
                (&got, &expected),
                (Err(TokenError::Malformed(_)), TokenError::Malformed(_))
                    | (
                        Err(TokenError::InvalidClaims(_)),
                        TokenError::InvalidClaims(_)
                    )
                    | (
                        Err(TokenError::TooLarge { .. }),
                        TokenError::TooLarge { .. }
                    )
            );
            let shown: String = token.chars().take(60).collect();
            assert!(same_kind, "{shown}: {got:?}");
        }
        // Arbitrary bytes in each part, of every small length.
        for n in 0..40 {
            let junk: String = (0..n).map(|i| ['a', '.', '-', '_', 'Z'][i % 5]).collect();
            assert!(verifier.verify(&junk, at(T0)).is_err());
        }
        // A clock before 1970 is an error, not a panic.
        let token = signer.issue(ISSUER, &request(), at(T0), "j").unwrap();
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(verifier.verify(&token, before), Err(TokenError::Clock));
        assert_eq!(
            signer.issue(ISSUER, &request(), before, "j"),
            Err(TokenError::Clock)
        );
    }

    #[test]
    fn errors_never_contain_the_token() {
        let signer = signer();
        let verifier = verifier(&signer);
        let mut tokens: Vec<String> = broken_tokens(&signer).into_iter().map(|(t, _)| t).collect();
        let good = signer.issue(ISSUER, &request(), at(T0), "j").unwrap();
        tokens.push(good.clone());
        let header = format!(r#"{{"alg":"{}"}}"#, "x".repeat(100));
        tokens.push(sign_raw(&signer, &header, &payload_json(&good)));
        for (i, token) in tokens.iter().enumerate() {
            // The good token expired long ago at this time.
            let Err(error) = verifier.verify(token, at(T0 + 100_000)) else {
                panic!("token {i} verified");
            };
            let message = format!("{error} {error:?}");
            for part in token.split('.').filter(|p| p.len() >= 8) {
                assert!(!message.contains(part), "{i}: {message}");
            }
            assert!(!message.contains("xxxxxxxx"), "{i}: {message}");
        }
        assert!(!format!("{signer:?}").contains("key_pair"));
    }

    #[test]
    fn issuing_checks_the_request() {
        let signer = signer();
        let mut bad = request();
        bad.audiences.clear();
        assert!(signer.issue(ISSUER, &bad, at(T0), "j").is_err());
        let mut bad = request();
        bad.namespace = "a:b".into();
        assert!(signer.issue(ISSUER, &bad, at(T0), "j").is_err());
        let mut bad = request();
        bad.pod = Some(ObjectRef::new("", "uid"));
        assert!(signer.issue(ISSUER, &bad, at(T0), "j").is_err());
        let mut bad = request();
        bad.expiration = Duration::MAX;
        assert!(signer.issue(ISSUER, &bad, at(T0), "j").is_err());
        assert!(signer.issue("", &request(), at(T0), "j").is_err());
        assert_ne!(new_jti(), new_jti());
    }

    #[test]
    fn expiration_is_clamped_between_ten_minutes_and_the_maximum() {
        let max = DEFAULT_MAX_TOKEN_EXPIRATION;
        let secs = Duration::from_secs;
        assert_eq!(clamp_expiration(secs(0), max), MIN_TOKEN_EXPIRATION);
        assert_eq!(clamp_expiration(secs(599), max), secs(600));
        assert_eq!(clamp_expiration(secs(3607), max), secs(3607));
        assert_eq!(clamp_expiration(secs(2 * 365 * 24 * 3600), max), max);
        assert_eq!(clamp_expiration(Duration::MAX, max), max);
        assert_eq!(clamp_expiration(secs(7200), secs(3600)), secs(3600));
        // A maximum below the minimum cannot push a token under ten minutes.
        assert_eq!(clamp_expiration(secs(7200), secs(60)), MIN_TOKEN_EXPIRATION);
    }

    #[test]
    fn the_key_id_is_the_hash_of_the_subject_public_key_info() {
        // rcgen builds the SubjectPublicKeyInfo on its own, so this checks our prefix.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let signer = TokenSigner::from_pkcs8_der(&key.serialize_der()).unwrap();
        let spki = key.subject_public_key_info();
        assert_eq!(signer.verification_key().spki_der(), spki);
        assert_eq!(signer.key_pair.public_key().as_ref(), key.public_key_raw());
        let hash = ring::digest::digest(&ring::digest::SHA256, &spki);
        assert_eq!(signer.key_id(), b64(hash.as_ref()));
        assert_eq!(signer.key_id().len(), 43);

        let from_spki = VerificationKey::from_spki_der(&spki).unwrap();
        assert_eq!(from_spki, signer.verification_key());
        let pem = key.public_key_pem();
        assert_eq!(
            VerificationKey::from_public_key_pem(&pem).unwrap(),
            from_spki
        );
        assert!(VerificationKey::from_spki_der(&spki[1..]).is_err());
        assert!(VerificationKey::from_uncompressed_point(&[4; 33]).is_err());
    }

    #[test]
    fn the_jwk_describes_the_signing_key() {
        let signer = signer();
        let jwk = signer.public_key_jwk();
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], "ES256");
        assert_eq!(jwk["kid"], signer.key_id());
        let coordinate = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap();
        let mut point = vec![4u8];
        point.extend(coordinate("x"));
        point.extend(coordinate("y"));
        assert_eq!(point, signer.key_pair.public_key().as_ref());
    }

    #[test]
    fn a_generated_key_round_trips_through_pem() {
        let (signer, pem) = TokenSigner::generate().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        let loaded = TokenSigner::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(loaded.key_id(), signer.key_id());
        let token = loaded.issue(ISSUER, &request(), at(T0), "j").unwrap();
        assert!(verifier(&signer).verify(&token, at(T0)).is_ok());

        // rcgen's PEM (another writer) loads too.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(TokenSigner::from_pkcs8_pem(&other.serialize_pem()).is_ok());

        for bad in [
            "",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----\n",
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\nAAAA",
        ] {
            assert!(
                matches!(
                    TokenSigner::from_pkcs8_pem(bad),
                    Err(TokenError::InvalidKey(_))
                ),
                "{bad}"
            );
        }
        let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert!(TokenSigner::from_pkcs8_pem(&ed25519.serialize_pem()).is_err());
    }
}
