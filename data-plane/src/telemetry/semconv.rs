//! Every attribute and metric name the data plane's traces and GenAI metrics use, in one
//! place: the OpenTelemetry GenAI semantic conventions (development status) as of
//! semantic-conventions v1.40.0 — `gen_ai.provider.name` (it replaced `gen_ai.system` in
//! v1.37) and `gen_ai.usage.cache_read.input_tokens` (added after v1.38) — plus Switchyard's
//! own names under `switchyard.*`. The conventions still move: a rename happens here.

// Span attributes of the GenAI conventions.
pub(crate) const OPERATION_NAME: &str = "gen_ai.operation.name";
pub(crate) const PROVIDER_NAME: &str = "gen_ai.provider.name";
pub(crate) const REQUEST_MODEL: &str = "gen_ai.request.model";
pub(crate) const REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
pub(crate) const REQUEST_TEMPERATURE: &str = "gen_ai.request.temperature";
pub(crate) const REQUEST_STREAM: &str = "gen_ai.request.stream";
pub(crate) const RESPONSE_MODEL: &str = "gen_ai.response.model";
pub(crate) const RESPONSE_ID: &str = "gen_ai.response.id";
pub(crate) const RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
pub(crate) const USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
pub(crate) const USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
pub(crate) const USAGE_CACHE_READ_INPUT_TOKENS: &str = "gen_ai.usage.cache_read.input_tokens";
pub(crate) const TOKEN_TYPE: &str = "gen_ai.token.type";
pub(crate) const ERROR_TYPE: &str = "error.type";
pub(crate) const HTTP_STATUS: &str = "http.response.status_code";

// Switchyard's own span attributes.
pub(crate) const KEY_ID: &str = "switchyard.key.id";
pub(crate) const ROUTE: &str = "switchyard.route";
pub(crate) const BACKEND: &str = "switchyard.backend";
pub(crate) const REQUEST_ID: &str = "switchyard.request.id";
pub(crate) const CACHE_RESULT: &str = "switchyard.cache.result";
pub(crate) const GUARDRAILS: &str = "switchyard.guardrails";
pub(crate) const LIMIT_DECISION: &str = "switchyard.limits.decision";
pub(crate) const COST_USD: &str = "switchyard.cost.usd";
pub(crate) const ATTEMPTS: &str = "switchyard.attempts";
pub(crate) const ATTEMPT: &str = "switchyard.attempt";
pub(crate) const STREAM_ENDED: &str = "switchyard.stream.ended";
pub(crate) const TIME_TO_FIRST_TOKEN: &str = "switchyard.time_to_first_token_s";
pub(crate) const STAGE_DURATION: &str = "switchyard.stage.duration_us";
pub(crate) const AUTH_RESULT: &str = "switchyard.auth.result";
pub(crate) const CONFIG_VERSION: &str = "switchyard.config.version";
pub(crate) const CONFIG_RESULT: &str = "switchyard.config.result";
pub(crate) const CONFIG_REJECTED: &str = "switchyard.config.rejected";

// Stage events on the SERVER span.
pub(crate) const EVENT_AUTH: &str = "switchyard.auth";
pub(crate) const EVENT_LIMITS: &str = "switchyard.limits";
pub(crate) const EVENT_GUARDRAILS: &str = "switchyard.guardrails";
pub(crate) const EVENT_CACHE: &str = "switchyard.cache";

// GenAI metrics (OTLP names; Prometheus gets them with `_` and unit suffixes).
pub(crate) const METRIC_TOKEN_USAGE: &str = "gen_ai.client.token.usage";
pub(crate) const METRIC_REQUEST_DURATION: &str = "gen_ai.server.request.duration";
pub(crate) const METRIC_TIME_TO_FIRST_TOKEN: &str = "gen_ai.server.time_to_first_token";
pub(crate) const METRIC_TIME_PER_OUTPUT_TOKEN: &str = "gen_ai.server.time_per_output_token";
pub(crate) const METRIC_COST: &str = "switchyard.cost";

/// Histogram boundaries the conventions advise.
pub(crate) const TOKEN_BUCKETS: [f64; 14] = [
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];
pub(crate) const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
pub(crate) const TTFT_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
pub(crate) const TPOT_BUCKETS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];

/// `gen_ai.operation.name` of an API endpoint.
pub(crate) fn operation(endpoint: &str) -> &'static str {
    match endpoint {
        "chat_completions" | "messages" | "responses" => "chat",
        "completions" => "text_completion",
        "embeddings" => "embeddings",
        // Not a GenAI operation the conventions name.
        "count_tokens" => "count_tokens",
        _ => "other",
    }
}

/// `gen_ai.provider.name` of a pool's provider label (the conventions' well-known values;
/// `_OTHER` for an OpenAI-compatible server, whose vendor the gateway does not know).
pub(crate) fn provider(label: &str) -> &'static str {
    match label {
        "openai" => "openai",
        "azure-openai" => "azure.ai.openai",
        "anthropic" => "anthropic",
        "gemini" => "gcp.gemini",
        "bedrock" => "aws.bedrock",
        "mock" => "switchyard.mock",
        "cache" => "switchyard.cache",
        "" => "",
        _ => "_OTHER",
    }
}
