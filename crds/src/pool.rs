//! ProviderPool: one provider type, its endpoints, the models it serves and how to reach them.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ResourceStatus, SecretKeyRef};

/// A pool of endpoints of one LLM provider, the models they serve and how to reach them.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "ProviderPool",
    namespaced,
    status = "ResourceStatus",
    shortname = "pp",
    category = "switchyard",
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ProviderPoolSpec {
    /// Provider type: the wire format the endpoints speak.
    pub provider: ProviderKind,
    /// Endpoints of the provider. Optional for `mock`, which is built into the data plane.
    #[serde(default)]
    pub endpoints: Vec<PoolEndpoint>,
    /// Models served by this pool. Routes may only send these names upstream.
    #[serde(default)]
    pub models: Vec<PoolModel>,
    /// How requests are spread over the endpoints. Default `WeightedRandom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancingStrategy>,
    /// Timeouts towards the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<PoolTimeouts>,
    /// Azure OpenAI settings (provider `azure-openai`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureSettings>,
    /// Gemini settings (provider `gemini`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gemini: Option<GeminiSettings>,
    /// AWS Bedrock settings (provider `bedrock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bedrock: Option<BedrockSettings>,
    /// Behaviour of the built-in mock provider (provider `mock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock: Option<MockSettings>,
}

/// The provider types Switchyard speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// OpenAI's API (api.openai.com), bearer credential.
    Openai,
    /// Azure OpenAI deployments (`api-key` header, `api-version` query parameter).
    AzureOpenai,
    /// Anthropic's Messages API.
    Anthropic,
    /// Google Gemini (`generateContent`, `x-goog-api-key` credential).
    Gemini,
    /// AWS Bedrock Converse (SigV4-signed; credentials from `awsCredentialsSecretRef` or the
    /// data plane's standard AWS environment variables).
    Bedrock,
    /// Any server speaking OpenAI's wire format: vLLM, Ollama, Mistral, Groq, Together...
    OpenaiCompatible,
    /// Built-in mock provider: deterministic text, configurable latency and token rate.
    Mock,
}

/// One endpoint of a pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolEndpoint {
    /// Base URL, e.g. `https://api.openai.com/v1`, `https://api.anthropic.com` or
    /// `https://myres.openai.azure.com`.
    pub url: String,
    /// Relative weight for load balancing (0 drains the endpoint). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Secret key holding the provider credential (API key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_secret_ref: Option<SecretKeyRef>,
    /// Environment variable holding the credential (standalone mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_env: Option<String>,
    /// Secret holding AWS credentials for Bedrock under the standard names
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN`.
    /// Without it, data planes sign with their own AWS environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_credentials_secret_ref: Option<SecretNameRef>,
}

/// A Secret in the resource's own namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretNameRef {
    /// Name of the Secret.
    pub name: String,
}

/// A model served by a pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolModel {
    /// Upstream model name (for Azure: the deployment name).
    pub name: String,
    /// Context window in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
    /// Price in USD per million input tokens, as a decimal string, e.g. `"2.50"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_price_per_million: Option<String>,
    /// Price in USD per million output tokens, as a decimal string, e.g. `"10"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_price_per_million: Option<String>,
    /// Price in USD per million input tokens read from the provider's prompt cache.
    /// Default: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_price_per_million: Option<String>,
    /// Price in USD per million input tokens written to the provider's prompt cache.
    /// Default: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_price_per_million: Option<String>,
}

/// Load-balancing strategy over a pool's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LoadBalancingStrategy {
    /// Pick an endpoint at random, in proportion to its weight.
    WeightedRandom,
    /// Take endpoints in turn (weights ignored).
    RoundRobin,
}

/// Timeouts towards a pool's endpoints, as durations such as `2s` or `500ms`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolTimeouts {
    /// TCP + TLS connect. Default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    /// Until the response headers (streaming: the first byte) arrive. Default `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte: Option<String>,
    /// Whole request including the body or stream. Default `600s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<String>,
}

/// Azure OpenAI settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureSettings {
    /// The `api-version` query parameter, e.g. `2024-10-21`.
    pub api_version: String,
}

/// Gemini settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GeminiSettings {
    /// API version in the path. Default `v1beta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
}

/// AWS Bedrock settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BedrockSettings {
    /// AWS region requests are signed for, e.g. `us-east-1`.
    pub region: String,
}

/// Behaviour of the built-in mock provider.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MockSettings {
    /// Latency before the first byte, e.g. `20ms`. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,
    /// Streaming speed in tokens per second (0 = as fast as possible). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<u32>,
    /// Completion length in tokens. Default 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u32>,
}
