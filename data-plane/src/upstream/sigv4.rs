//! AWS Signature Version 4 for Bedrock requests, with the maintained `aws-sigv4` crate.
//! Credentials come from the pool's Secret, or else from the standard AWS environment
//! variables of the data plane (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`).

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;

/// Static AWS credentials. Never printed.
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AwsCredentials(<redacted>)")
    }
}

impl AwsCredentials {
    /// From the standard environment variables, if set.
    pub fn from_env() -> Option<Self> {
        let id = std::env::var("AWS_ACCESS_KEY_ID")
            .ok()
            .filter(|s| !s.is_empty())?;
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY")
            .ok()
            .filter(|s| !s.is_empty())?;
        Some(Self {
            access_key_id: id,
            secret_access_key: secret,
            session_token: std::env::var("AWS_SESSION_TOKEN")
                .ok()
                .filter(|s| !s.is_empty()),
        })
    }
}

/// Signs requests for one service in one region.
#[derive(Clone, Debug)]
pub struct Signer {
    pub region: String,
    pub service: &'static str,
    pub credentials: AwsCredentials,
}

#[derive(Debug, thiserror::Error)]
#[error("signing the request failed: {0}")]
pub struct SignError(String);

impl Signer {
    /// Adds `authorization`, `x-amz-date` (and `x-amz-security-token`) to a request whose
    /// body is `body`.
    pub fn sign<B>(&self, req: &mut http::Request<B>, body: &[u8]) -> Result<(), SignError> {
        self.sign_at(req, body, SystemTime::now())
    }

    fn sign_at<B>(
        &self,
        req: &mut http::Request<B>,
        body: &[u8],
        time: SystemTime,
    ) -> Result<(), SignError> {
        let c = &self.credentials;
        let identity = Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.clone(),
            c.session_token.clone(),
            None,
            "switchyard",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(self.service)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| SignError(e.to_string()))?
            .into();
        let uri = req.uri().to_string();
        let headers = req
            .headers()
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)));
        let signable = SignableRequest::new(
            req.method().as_str(),
            &uri,
            headers,
            SignableBody::Bytes(body),
        )
        .map_err(|e| SignError(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| SignError(e.to_string()))?
            .into_parts();
        instructions.apply_to_request_http1x(req);
        for name in ["authorization", "x-amz-security-token"] {
            if let Some(v) = req.headers_mut().get_mut(name) {
                v.set_sensitive(true);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_with_the_scope_of_region_and_service() {
        let s = Signer {
            region: "us-west-2".into(),
            service: "bedrock",
            credentials: AwsCredentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
                session_token: Some("token".into()),
            },
        };
        let mut req =
            http::Request::post("https://bedrock-runtime.us-west-2.amazonaws.com/model/m/converse")
                .header("content-type", "application/json")
                .body(())
                .expect("request");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        s.sign_at(&mut req, b"{}", t).expect("sign");
        let auth = req.headers()["authorization"].to_str().expect("ascii");
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-west-2/bedrock/aws4_request"
            ),
            "{auth}"
        );
        assert!(auth.contains("SignedHeaders=") && auth.contains("Signature="));
        assert_eq!(req.headers()["x-amz-date"], "20231114T221320Z");
        assert_eq!(req.headers()["x-amz-security-token"], "token");
        assert!(req.headers()["authorization"].is_sensitive());
        assert!(!format!("{:?}", s.credentials).contains("EXAMPLEKEY"));
    }
}
