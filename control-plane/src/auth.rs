//! Who may receive the configuration. A snapshot carries every provider credential and every
//! virtual key's hash, so each config stream is authenticated before anything is read from it
//! or sent on it, and the node id a data plane claims must be the identity it proved.
//!
//! Two credentials, either or both:
//! - a Kubernetes ServiceAccount token (projected into the data-plane pod with a dedicated
//!   audience), sent as `authorization: Bearer`, verified with a TokenReview and cached for a
//!   bounded time. Only the ServiceAccounts named by `--allowed-service-accounts` are admitted;
//!   the identity is the pod the token is bound to.
//! - a client certificate signed by `--client-ca` (mTLS); the identity is its subject CN.
//!
//! Every credential presented must verify, and they must agree on the node. A stream lives no
//! longer than the credentials that opened it: at their expiry the server ends it and the data
//! plane reconnects with fresh ones (a rotated token file, a renewed certificate).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use sha2::{Digest, Sha256};
use tonic::Status;

/// Key under which TokenReview reports the pod a projected token is bound to.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// How long a successful TokenReview is reused (never past the token's own expiry).
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(60);
/// Most cached reviews; the cache is cleared when full.
const TOKEN_CACHE_ENTRIES: usize = 10_000;

/// What a data plane proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The node the credential is bound to: the pod of a token, the CN of a certificate.
    pub node: String,
    /// Who vouched for it, for logs: `system:serviceaccount:ns:name`, `CN=...`.
    pub principal: String,
    /// When the earliest presented credential expires; the stream ends then.
    pub expires: Option<SystemTime>,
}

/// Why a stream is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error(
        "no credential: present a ServiceAccount token (authorization: Bearer) or a client certificate"
    )]
    Missing,
    #[error("token rejected: {0}")]
    Token(String),
    #[error("client certificate rejected: {0}")]
    Certificate(String),
    #[error("the token and the client certificate name different nodes ({0} and {1})")]
    Disagree(String, String),
    #[error("node_id {claimed:?} is not the authenticated identity {node:?}")]
    NodeMismatch { claimed: String, node: String },
    /// The API error names the failure, never the token.
    #[error("verifying the token failed: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// Low-cardinality metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Token(_) => "bad_token",
            Self::Certificate(_) => "bad_certificate",
            Self::Disagree(..) => "disagree",
            Self::NodeMismatch { .. } => "node_mismatch",
            Self::Unavailable(_) => "unavailable",
        }
    }

    pub fn into_status(self) -> Status {
        match self {
            Self::NodeMismatch { .. } => Status::permission_denied(self.to_string()),
            Self::Unavailable(_) => Status::unavailable(self.to_string()),
            _ => Status::unauthenticated(self.to_string()),
        }
    }
}

/// The outcome of one TokenReview, as far as it matters here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Review {
    pub authenticated: bool,
    pub username: String,
    /// Audiences the token is valid for, of those asked.
    pub audiences: Vec<String>,
    pub pod_name: Option<String>,
    pub error: Option<String>,
}

/// Asks the cluster whether a token is valid (a seam for unit tests; the real one is
/// [`KubeReviewer`]).
#[tonic::async_trait]
pub trait TokenReviewer: Send + Sync + std::fmt::Debug {
    async fn review(&self, token: &str, audience: &str) -> Result<Review, kube::Error>;
}

/// TokenReview through the Kubernetes API (RBAC: `create` on `tokenreviews`).
#[derive(Clone)]
pub struct KubeReviewer(pub kube::Client);

impl std::fmt::Debug for KubeReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeReviewer")
    }
}

#[tonic::async_trait]
impl TokenReviewer for KubeReviewer {
    async fn review(&self, token: &str, audience: &str) -> Result<Review, kube::Error> {
        let api: kube::Api<TokenReview> = kube::Api::all(self.0.clone());
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![audience.to_owned()]),
            },
            ..Default::default()
        };
        let done = api
            .create(&kube::api::PostParams::default(), &request)
            // The API error names the failure, never the token.
            .await?;
        let status = done.status.unwrap_or_default();
        let user = status.user.unwrap_or_default();
        Ok(Review {
            authenticated: status.authenticated.unwrap_or(false),
            username: user.username.unwrap_or_default(),
            audiences: status.audiences.unwrap_or_default(),
            pod_name: user
                .extra
                .as_ref()
                .and_then(|e| e.get(POD_NAME_EXTRA))
                .and_then(|v| v.first())
                .cloned(),
            error: status.error,
        })
    }
}

#[derive(Clone, Debug)]
struct Cached {
    identity: Identity,
    until: SystemTime,
}

/// ServiceAccount-token authentication.
#[derive(Debug)]
pub struct TokenAuth {
    reviewer: Arc<dyn TokenReviewer>,
    audience: String,
    /// Admitted usernames: `system:serviceaccount:<namespace>:<name>`.
    allowed: Vec<String>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

impl TokenAuth {
    /// `allowed` holds `namespace/name` ServiceAccounts.
    pub fn new(
        reviewer: Arc<dyn TokenReviewer>,
        audience: impl Into<String>,
        allowed: &[String],
    ) -> Self {
        Self {
            reviewer,
            audience: audience.into(),
            allowed: allowed
                .iter()
                .map(|sa| format!("system:serviceaccount:{}", sa.replacen('/', ":", 1)))
                .collect(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, hash: &[u8; 32], now: SystemTime) -> Option<Identity> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(hash)
            .filter(|c| c.until > now)
            .map(|c| c.identity.clone())
    }

    /// Verifies a token: valid for the audience, from an admitted ServiceAccount, bound to a pod.
    pub async fn verify(&self, token: &str, now: SystemTime) -> Result<Identity, AuthError> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(id) = self.cached(&hash, now) {
            return Ok(id);
        }
        let r = self
            .reviewer
            .review(token, &self.audience)
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        if !r.authenticated {
            return Err(AuthError::Token(
                r.error
                    .unwrap_or_else(|| "the cluster did not authenticate it".into()),
            ));
        }
        if !r.audiences.is_empty() && !r.audiences.contains(&self.audience) {
            return Err(AuthError::Token(format!(
                "not issued for audience {:?}",
                self.audience
            )));
        }
        if !self.allowed.contains(&r.username) {
            return Err(AuthError::Token(format!(
                "{} is not an admitted data-plane ServiceAccount",
                r.username
            )));
        }
        let Some(node) = r.pod_name else {
            return Err(AuthError::Token(format!(
                "{} presented a token that is not bound to a pod (use a projected token)",
                r.username
            )));
        };
        let expires = token_expiry(token);
        let identity = Identity {
            node,
            principal: r.username,
            expires,
        };
        let until = expires.map_or(now + TOKEN_CACHE_TTL, |e| e.min(now + TOKEN_CACHE_TTL));
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= TOKEN_CACHE_ENTRIES {
            cache.retain(|_, c| c.until > now);
            if cache.len() >= TOKEN_CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            hash,
            Cached {
                identity: identity.clone(),
                until,
            },
        );
        Ok(identity)
    }
}

/// The `exp` claim of a JWT, read without verifying it (call only once the cluster has
/// vouched for the token).
pub fn token_expiry(token: &str) -> Option<SystemTime> {
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<u64>,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<Claims>(&bytes).ok()?.exp?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp))
}

/// The identity in a client certificate (already verified against `--client-ca` by TLS): its
/// subject CN, and its expiry.
pub fn certificate_identity(der: &[u8]) -> Result<Identity, AuthError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| AuthError::Certificate(format!("unparsable: {e}")))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .ok_or_else(|| AuthError::Certificate("its subject has no common name".into()))?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    Ok(Identity {
        node: cn.to_owned(),
        principal: format!("CN={cn}"),
        expires: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(not_after)),
    })
}

/// The client-authentication policy of the config server.
#[derive(Debug, Default)]
pub struct ClientAuth {
    /// Client certificates are verified by TLS against `--client-ca`.
    pub mtls: bool,
    pub tokens: Option<TokenAuth>,
}

impl ClientAuth {
    /// No credential can be checked: every client is admitted (`--insecure-plaintext` only).
    pub fn is_disabled(&self) -> bool {
        !self.mtls && self.tokens.is_none()
    }

    /// Authenticates a stream from its metadata and TLS peer certificates. `Ok(None)` only
    /// when authentication is disabled.
    pub async fn authenticate<T>(
        &self,
        req: &tonic::Request<T>,
    ) -> Result<Option<Identity>, AuthError> {
        if self.is_disabled() {
            return Ok(None);
        }
        let now = SystemTime::now();
        let bearer = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let by_token = match (bearer, &self.tokens) {
            (Some(t), Some(auth)) => Some(auth.verify(t, now).await?),
            (Some(_), None) => {
                return Err(AuthError::Token(
                    "this control plane does not accept tokens (no --allowed-service-accounts)"
                        .into(),
                ));
            }
            (None, _) => None,
        };
        let by_cert = match req.peer_certs() {
            Some(chain) if self.mtls => match chain.first() {
                Some(leaf) => Some(certificate_identity(leaf)?),
                None => None,
            },
            _ => None,
        };
        let expired = |id: &Identity| id.expires.is_some_and(|e| e <= now);
        match (by_token, by_cert) {
            (None, None) => Err(AuthError::Missing),
            (Some(t), Some(c)) if t.node != c.node => Err(AuthError::Disagree(t.node, c.node)),
            (_, Some(c)) if expired(&c) => Err(AuthError::Certificate("expired".into())),
            (Some(t), Some(c)) => Ok(Some(Identity {
                expires: earliest(t.expires, c.expires),
                principal: format!("{} + {}", t.principal, c.principal),
                node: t.node,
            })),
            (Some(id), None) | (None, Some(id)) => Ok(Some(id)),
        }
    }
}

fn earliest(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Checks the node id a data plane claims against what it proved.
pub fn bind_node(identity: Option<&Identity>, claimed: &str) -> Result<(), AuthError> {
    match identity {
        Some(id) if id.node != claimed => Err(AuthError::NodeMismatch {
            claimed: claimed.to_owned(),
            node: id.node.clone(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A reviewer answering from a table, counting calls (the cache's effect).
    #[derive(Debug, Default)]
    struct Table {
        answers: HashMap<String, Review>,
        calls: AtomicUsize,
    }

    #[tonic::async_trait]
    impl TokenReviewer for Table {
        async fn review(&self, token: &str, _audience: &str) -> Result<Review, kube::Error> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if token == "unreachable" {
                return Err(kube::Error::Service("connection refused".into()));
            }
            Ok(self.answers.get(token).cloned().unwrap_or_default())
        }
    }

    fn jwt(exp: u64) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(b"{\"alg\":\"ES256\"}"),
            e.encode(format!("{{\"exp\":{exp}}}"))
        )
    }

    fn ok(user: &str, pod: Option<&str>) -> Review {
        Review {
            authenticated: true,
            username: user.into(),
            audiences: vec!["switchyard".into()],
            pod_name: pod.map(Into::into),
            error: None,
        }
    }

    fn auth(answers: &[(&str, Review)]) -> (TokenAuth, Arc<Table>) {
        let table = Arc::new(Table {
            answers: answers
                .iter()
                .map(|(t, r)| ((*t).to_owned(), r.clone()))
                .collect(),
            calls: AtomicUsize::new(0),
        });
        let a = TokenAuth::new(table.clone(), "switchyard", &["sys/dp".to_owned()]);
        (a, table)
    }

    #[tokio::test]
    async fn tokens_must_be_admitted_pod_bound_and_for_the_audience() {
        let now = SystemTime::now();
        let far = now + Duration::from_secs(3600);
        let good = jwt(far
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs());
        let mut wrong_aud = ok("system:serviceaccount:sys:dp", Some("dp-a"));
        wrong_aud.audiences = vec!["other".into()];
        let (a, _) = auth(&[
            (&good, ok("system:serviceaccount:sys:dp", Some("dp-a"))),
            (
                "other-sa",
                ok("system:serviceaccount:sys:intruder", Some("x")),
            ),
            ("unbound", ok("system:serviceaccount:sys:dp", None)),
            ("aud", wrong_aud),
        ]);
        let id = a.verify(&good, now).await.expect("admitted");
        assert_eq!(id.node, "dp-a");
        assert_eq!(id.principal, "system:serviceaccount:sys:dp");
        assert!(id.expires.is_some_and(|e| e > now), "exp read from the JWT");
        for (token, label) in [
            ("other-sa", "bad_token"),
            ("unbound", "bad_token"),
            ("aud", "bad_token"),
            ("forged", "bad_token"),
            ("unreachable", "unavailable"),
        ] {
            let e = a.verify(token, now).await.expect_err(token);
            assert_eq!(e.metric_label(), label, "{token}: {e}");
        }
    }

    #[tokio::test]
    async fn reviews_are_cached_until_ttl_or_token_expiry() {
        let now = SystemTime::now();
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
        };
        let long = jwt(secs(now + Duration::from_secs(3600)));
        let short = jwt(secs(now + Duration::from_secs(5)));
        let (a, table) = auth(&[
            (&long, ok("system:serviceaccount:sys:dp", Some("dp-a"))),
            (&short, ok("system:serviceaccount:sys:dp", Some("dp-b"))),
        ]);
        a.verify(&long, now).await.expect("first");
        a.verify(&long, now + Duration::from_secs(30))
            .await
            .expect("cached");
        assert_eq!(table.calls.load(Ordering::Relaxed), 1);
        a.verify(&long, now + TOKEN_CACHE_TTL + Duration::from_secs(1))
            .await
            .expect("reviewed again");
        assert_eq!(table.calls.load(Ordering::Relaxed), 2);
        a.verify(&short, now).await.expect("short");
        a.verify(&short, now + Duration::from_secs(10))
            .await
            .expect("asked again: the cache never outlives the token");
        assert_eq!(table.calls.load(Ordering::Relaxed), 4);
        // A rejection is not cached as a success.
        assert!(a.verify("forged", now).await.is_err());
        assert!(a.verify("forged", now).await.is_err());
    }

    #[test]
    fn node_binding() {
        let id = Identity {
            node: "dp-a".into(),
            principal: "p".into(),
            expires: None,
        };
        assert!(bind_node(Some(&id), "dp-a").is_ok());
        let e = bind_node(Some(&id), "dp-b").expect_err("mismatch");
        assert_eq!(e.into_status().code(), tonic::Code::PermissionDenied);
        assert!(bind_node(None, "anything").is_ok());
    }

    #[tokio::test]
    async fn missing_credentials_are_unauthenticated() {
        let (tokens, _) = auth(&[]);
        let a = ClientAuth {
            mtls: true,
            tokens: Some(tokens),
        };
        let e = a
            .authenticate(&tonic::Request::new(()))
            .await
            .expect_err("no credential");
        assert_eq!(e, AuthError::Missing);
        assert_eq!(e.into_status().code(), tonic::Code::Unauthenticated);
        let mut req = tonic::Request::new(());
        req.metadata_mut()
            .insert("authorization", "Bearer forged".parse().expect("meta"));
        assert!(a.authenticate(&req).await.is_err());
        assert!(ClientAuth::default().is_disabled());
    }
}
