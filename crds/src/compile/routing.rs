//! Pools and routes: endpoints and their credentials, models and prices, timeouts,
//! balancing, outlier detection, retries and fallback groups.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use switchyard_proto::v1 as pb;

use super::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_FIRST_BYTE_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MOCK_COMPLETION_TOKENS, DEFAULT_TOTAL_TIMEOUT, Reject, ResourceKey, compile_limits,
    secret_value,
};
use crate::validate;
use crate::world::World;
use crate::{LLMRoute, ProviderKind, ProviderPool};

/// The most a built-in mock pool may answer, and wait before it does.
const MAX_MOCK_COMPLETION_TOKENS: u32 = 100_000;
const MAX_MOCK_LATENCY: Duration = Duration::from_secs(300);

pub(super) fn compile_pool(
    pool: &ProviderPool,
    key: &ResourceKey,
    world: &World,
    egress: &crate::egress::Egress,
) -> Result<pb::Pool, Reject> {
    let spec = &pool.spec;
    let provider = match spec.provider {
        ProviderKind::Openai => pb::ProviderKind::Openai,
        ProviderKind::AzureOpenai => pb::ProviderKind::AzureOpenai,
        ProviderKind::Anthropic => pb::ProviderKind::Anthropic,
        ProviderKind::OpenaiCompatible => pb::ProviderKind::OpenaiCompatible,
        ProviderKind::Mock => pb::ProviderKind::Mock,
        ProviderKind::Gemini => pb::ProviderKind::Gemini,
        ProviderKind::Bedrock => pb::ProviderKind::Bedrock,
    };
    let needs_credential = matches!(
        spec.provider,
        ProviderKind::Openai
            | ProviderKind::AzureOpenai
            | ProviderKind::Anthropic
            | ProviderKind::Gemini
    );
    if spec.endpoints.is_empty() && spec.provider != ProviderKind::Mock {
        return Err(Reject::spec(
            "NoEndpoints",
            "spec.endpoints: at least one endpoint is required",
        ));
    }
    let mut endpoints = Vec::new();
    for (i, e) in spec.endpoints.iter().enumerate() {
        let field = format!("spec.endpoints[{i}]");
        let url = validate::endpoint_url(&format!("{field}.url"), &e.url)?;
        egress.check(&format!("{field}.url"), &url, &|n| {
            world.namespaces.contains_key(n)
        })?;
        let weight = validate::weight(&format!("{field}.weight"), e.weight.unwrap_or(1))?;
        let credential = match (&e.credential_secret_ref, &e.credential_env) {
            (Some(r), _) => secret_value(world, &key.namespace, &r.name, &r.key)?
                .trim()
                .to_owned(),
            (None, Some(var)) => world.env.get(var).cloned().ok_or_else(|| {
                Reject::refs(
                    "EnvNotFound",
                    format!("{field}.credentialEnv: variable {var} is not set"),
                )
            })?,
            (None, None) if needs_credential => {
                return Err(Reject::refs(
                    "MissingCredential",
                    format!(
                        "{field}: provider {:?} needs credentialSecretRef",
                        spec.provider
                    ),
                ));
            }
            (None, None) => String::new(),
        };
        let aws = match (&e.aws_credentials_secret_ref, spec.provider) {
            (Some(r), ProviderKind::Bedrock) => {
                let get = |k: &str| secret_value(world, &key.namespace, &r.name, k);
                Some(pb::AwsCredentials {
                    access_key_id: get("AWS_ACCESS_KEY_ID")?.trim().to_owned(),
                    secret_access_key: get("AWS_SECRET_ACCESS_KEY")?.trim().to_owned(),
                    session_token: get("AWS_SESSION_TOKEN")
                        .map(|t| t.trim().to_owned())
                        .unwrap_or_default(),
                })
            }
            (Some(_), _) => {
                return Err(Reject::spec(
                    "Invalid",
                    format!("{field}.awsCredentialsSecretRef: only for provider bedrock"),
                ));
            }
            (None, _) => None,
        };
        endpoints.push(pb::Endpoint {
            url: e.url.trim_end_matches('/').to_owned(),
            weight,
            credential,
            aws,
        });
    }
    if !endpoints.is_empty() && endpoints.iter().all(|e| e.weight == 0) {
        return Err(Reject::spec(
            "NoWeight",
            "spec.endpoints: every endpoint has weight 0",
        ));
    }
    let mut models = Vec::new();
    let mut names = HashSet::new();
    for (i, m) in spec.models.iter().enumerate() {
        let field = format!("spec.models[{i}]");
        validate::model_glob(&format!("{field}.name"), &m.name)?;
        if m.name.contains(['*', '?']) {
            return Err(Reject::spec(
                "Invalid",
                format!("{field}.name: pool models are exact names, not globs"),
            ));
        }
        if !names.insert(m.name.as_str()) {
            return Err(Reject::spec(
                "Invalid",
                format!("{field}.name: {:?} listed twice", m.name),
            ));
        }
        for (j, a) in m.aliases.iter().enumerate() {
            let f = format!("{field}.aliases[{j}]");
            validate::model_glob(&f, a)?;
            if a.contains(['*', '?']) || !names.insert(a.as_str()) {
                return Err(Reject::spec(
                    "Invalid",
                    format!("{f}: {a:?} is a glob or names a model listed already"),
                ));
            }
        }
        let price = |f: &str, v: &Option<String>| -> Result<u64, Reject> {
            Ok(v.as_deref()
                .map(|v| validate::price_micros(&format!("{field}.{f}"), v))
                .transpose()?
                .unwrap_or(0))
        };
        models.push(pb::Model {
            name: m.name.clone(),
            context_window: m.context_window.unwrap_or(0),
            input_price_per_million_micros: price(
                "inputPricePerMillion",
                &m.input_price_per_million,
            )?,
            output_price_per_million_micros: price(
                "outputPricePerMillion",
                &m.output_price_per_million,
            )?,
            cache_read_price_per_million_micros: price(
                "cacheReadPricePerMillion",
                &m.cache_read_price_per_million,
            )?,
            cache_write_price_per_million_micros: price(
                "cacheWritePricePerMillion",
                &m.cache_write_price_per_million,
            )?,
            aliases: m.aliases.clone(),
            priced: m.input_price_per_million.is_some() || m.output_price_per_million.is_some(),
        });
    }
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let t = spec.timeouts.clone().unwrap_or_default();
    let dur = |f: &str, v: &Option<String>, default: Duration| {
        duration_ms(&format!("spec.timeouts.{f}"), v, default)
    };
    let timeouts = pb::Timeouts {
        connect_ms: dur("connect", &t.connect, DEFAULT_CONNECT_TIMEOUT)?,
        first_byte_ms: dur("firstByte", &t.first_byte, DEFAULT_FIRST_BYTE_TIMEOUT)?,
        total_ms: dur("total", &t.total, DEFAULT_TOTAL_TIMEOUT)?,
        idle_ms: dur("idle", &t.idle, DEFAULT_IDLE_TIMEOUT)?,
    };
    let api_version = match (&spec.azure, spec.provider) {
        (Some(a), _) if !a.api_version.trim().is_empty() => a.api_version.trim().to_owned(),
        (_, ProviderKind::AzureOpenai) => {
            return Err(Reject::spec(
                "Invalid",
                "spec.azure.apiVersion is required for azure-openai",
            ));
        }
        (_, ProviderKind::Gemini) => spec
            .gemini
            .as_ref()
            .and_then(|g| g.api_version.as_deref())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .unwrap_or("v1beta")
            .to_owned(),
        _ => String::new(),
    };
    let region = match (&spec.bedrock, spec.provider) {
        (Some(b), ProviderKind::Bedrock) if !b.region.trim().is_empty() => {
            b.region.trim().to_owned()
        }
        (_, ProviderKind::Bedrock) => {
            return Err(Reject::spec(
                "Invalid",
                "spec.bedrock.region is required for bedrock",
            ));
        }
        _ => String::new(),
    };
    let mock = match &spec.mock {
        Some(m) => {
            // The built-in mock answers inside the data plane: bounded, so one pool cannot
            // make it hold a huge answer or a request forever.
            let latency = m
                .latency
                .as_deref()
                .map(|v| validate::duration("spec.mock.latency", v))
                .transpose()?
                .unwrap_or_default();
            if latency > MAX_MOCK_LATENCY {
                return Err(Reject::spec(
                    "Invalid",
                    format!("spec.mock.latency: at most {MAX_MOCK_LATENCY:?}"),
                ));
            }
            let completion_tokens = m
                .completion_tokens
                .unwrap_or(DEFAULT_MOCK_COMPLETION_TOKENS);
            if completion_tokens > MAX_MOCK_COMPLETION_TOKENS {
                return Err(Reject::spec(
                    "Invalid",
                    format!("spec.mock.completionTokens: at most {MAX_MOCK_COMPLETION_TOKENS}"),
                ));
            }
            pb::MockBehaviour {
                latency_ms: ms(latency),
                tokens_per_second: m.tokens_per_second.unwrap_or(0),
                completion_tokens,
            }
        }
        None => pb::MockBehaviour {
            completion_tokens: DEFAULT_MOCK_COMPLETION_TOKENS,
            ..Default::default()
        },
    };
    if spec.load_balancing == Some(crate::LoadBalancingStrategy::Cost) {
        return Err(Reject::spec(
            "Invalid",
            "spec.loadBalancing: Cost balances a route's backends; the endpoints of a pool all have the same prices",
        ));
    }
    let load_balancing = load_balancing(spec.load_balancing);
    let o = spec.outlier_detection.clone().unwrap_or_default();
    let odur = |f: &str, v: &Option<String>, default: Duration| {
        duration_ms(&format!("spec.outlierDetection.{f}"), v, default)
    };
    let max_ejected_percent = o.max_ejected_percent.unwrap_or(50);
    if max_ejected_percent > 100 {
        return Err(Reject::spec(
            "Invalid",
            "spec.outlierDetection.maxEjectedPercent: at most 100",
        ));
    }
    let outlier_detection = pb::OutlierDetection {
        consecutive_failures: o.consecutive_failures.unwrap_or(5),
        consecutive_rate_limits: o.consecutive_rate_limits.unwrap_or(3),
        base_ejection_ms: odur(
            "baseEjectionTime",
            &o.base_ejection_time,
            Duration::from_secs(10),
        )?,
        max_ejection_ms: odur(
            "maxEjectionTime",
            &o.max_ejection_time,
            Duration::from_secs(300),
        )?,
        max_ejected_percent,
    };
    let c = spec.connection_pool.clone().unwrap_or_default();
    let connection_pool = pb::ConnectionPool {
        max_connections: c.max_connections.unwrap_or(0),
        max_idle: c.max_idle_connections.unwrap_or(256),
        idle_timeout_ms: duration_ms(
            "spec.connectionPool.idleTimeout",
            &c.idle_timeout,
            Duration::from_secs(90),
        )?,
    };
    let health_check = spec
        .health_check
        .as_ref()
        .map(|h| health_check(h, provider, &api_version))
        .transpose()?;
    let default_price = spec
        .default_price
        .as_ref()
        .map(|p| -> Result<pb::Model, Reject> {
            Ok(pb::Model {
                input_price_per_million_micros: validate::price_micros(
                    "spec.defaultPrice.inputPricePerMillion",
                    &p.input_price_per_million,
                )?,
                output_price_per_million_micros: validate::price_micros(
                    "spec.defaultPrice.outputPricePerMillion",
                    &p.output_price_per_million,
                )?,
                priced: true,
                ..Default::default()
            })
        })
        .transpose()?;
    Ok(pb::Pool {
        id: key.id(),
        provider: provider.into(),
        endpoints,
        models,
        default_price,
        load_balancing: load_balancing.into(),
        timeouts: Some(timeouts),
        api_version,
        mock: Some(mock),
        region,
        outlier_detection: Some(outlier_detection),
        connection_pool: Some(connection_pool),
        health_check,
    })
}

/// Active health checks, with the provider's model list as the default path.
fn health_check(
    h: &crate::HealthCheck,
    provider: pb::ProviderKind,
    api_version: &str,
) -> Result<pb::HealthCheck, Reject> {
    let default_path = match provider {
        pb::ProviderKind::Anthropic => "/v1/models".to_owned(),
        pb::ProviderKind::Gemini => format!("/{api_version}/models"),
        pb::ProviderKind::AzureOpenai => format!("/openai/models?api-version={api_version}"),
        pb::ProviderKind::Bedrock | pb::ProviderKind::Mock | pb::ProviderKind::Unspecified => {
            return Err(Reject::spec(
                "Invalid",
                "spec.healthCheck is not available for this provider (its endpoints have no plain GET to ask); passive outlier detection still applies",
            ));
        }
        _ => "/models".to_owned(),
    };
    let path = h.path.clone().unwrap_or(default_path);
    if !path.starts_with('/') || path.contains(char::is_whitespace) {
        return Err(Reject::spec(
            "Invalid",
            "spec.healthCheck.path: a path starting with `/`, without spaces",
        ));
    }
    let interval_ms = duration_ms(
        "spec.healthCheck.interval",
        &h.interval,
        Duration::from_secs(10),
    )?;
    let timeout_ms = duration_ms(
        "spec.healthCheck.timeout",
        &h.timeout,
        Duration::from_secs(2),
    )?;
    if interval_ms < 100 || timeout_ms == 0 {
        return Err(Reject::spec(
            "Invalid",
            "spec.healthCheck: interval at least 100ms and a timeout above 0",
        ));
    }
    Ok(pb::HealthCheck {
        path,
        interval_ms,
        timeout_ms,
        unhealthy_threshold: h.unhealthy_threshold.unwrap_or(2).max(1),
        healthy_threshold: h.healthy_threshold.unwrap_or(1).max(1),
    })
}

/// A duration field in milliseconds (`field` names it in errors), or the default.
fn duration_ms(field: &str, v: &Option<String>, default: Duration) -> Result<u64, Reject> {
    let d = v
        .as_deref()
        .map(|v| validate::duration(field, v))
        .transpose()?
        .unwrap_or(default);
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn load_balancing(s: Option<crate::LoadBalancingStrategy>) -> pb::LoadBalancing {
    use crate::LoadBalancingStrategy as S;
    match s {
        None | Some(S::WeightedRandom) => pb::LoadBalancing::WeightedRandom,
        Some(S::RoundRobin) => pb::LoadBalancing::RoundRobin,
        Some(S::LeastRequest) => pb::LoadBalancing::LeastRequest,
        Some(S::LeastLatency) => pb::LoadBalancing::LeastLatency,
        Some(S::Cost) => pb::LoadBalancing::Cost,
    }
}

fn failure_class(c: crate::FailureClass) -> pb::FailureClass {
    use crate::FailureClass as C;
    match c {
        C::RateLimited => pb::FailureClass::RateLimited,
        C::Overloaded => pb::FailureClass::Overloaded,
        C::ServerError => pb::FailureClass::ServerError,
        C::Timeout => pb::FailureClass::Timeout,
        C::ContextWindowExceeded => pb::FailureClass::ContextWindowExceeded,
        C::ContentFiltered => pb::FailureClass::ContentFiltered,
        C::Authentication => pb::FailureClass::Authentication,
        C::BadRequest => pb::FailureClass::BadRequest,
    }
}

fn compile_retry(r: Option<&crate::RetryPolicy>) -> Result<pb::RetryPolicy, Reject> {
    let r = r.cloned().unwrap_or_default();
    let dur = |f: &str, v: &Option<String>, default: Duration| {
        duration_ms(&format!("spec.retries.{f}"), v, default)
    };
    let attempts = r.attempts.unwrap_or(2);
    if !(1..=10).contains(&attempts) {
        return Err(Reject::spec(
            "Invalid",
            "spec.retries.attempts: between 1 and 10",
        ));
    }
    let retry_on = r.retry_on.unwrap_or_else(|| {
        use crate::FailureClass as C;
        vec![C::RateLimited, C::Overloaded, C::ServerError, C::Timeout]
    });
    Ok(pb::RetryPolicy {
        attempts,
        retry_on: retry_on
            .into_iter()
            .map(|c| failure_class(c).into())
            .collect(),
        backoff_ms: dur("backoff", &r.backoff, Duration::from_millis(100))?,
        max_backoff_ms: dur("maxBackoff", &r.max_backoff, Duration::from_secs(2))?,
        budget_percent: r.budget_percent.unwrap_or(20).min(1000),
        min_retries_per_second: r.min_retries_per_second.unwrap_or(5),
    })
}

pub(super) fn compile_route(
    route: &LLMRoute,
    key: &ResourceKey,
    pools: &BTreeMap<&str, &pb::Pool>,
    rejected_pools: &BTreeSet<String>,
) -> Result<pb::Route, Reject> {
    let spec = &route.spec;
    if spec.models.is_empty() {
        return Err(Reject::spec(
            "Invalid",
            "spec.models: at least one model name is required",
        ));
    }
    for (i, m) in spec.models.iter().enumerate() {
        validate::model_glob(&format!("spec.models[{i}]"), m)?;
    }
    let backends = compile_backends("spec.backends", &spec.backends, key, pools, rejected_pools)?;
    let mut fallbacks = Vec::with_capacity(spec.fallbacks.len());
    for (i, g) in spec.fallbacks.iter().enumerate() {
        let field = format!("spec.fallbacks[{i}]");
        if g.when.is_empty() {
            return Err(Reject::spec(
                "Invalid",
                format!("{field}.when: at least one failure class is required"),
            ));
        }
        fallbacks.push(pb::FallbackGroup {
            on: g.when.iter().map(|c| failure_class(*c).into()).collect(),
            backends: compile_backends(
                &format!("{field}.backends"),
                &g.backends,
                key,
                pools,
                rejected_pools,
            )?,
        });
    }
    Ok(pb::Route {
        id: key.id(),
        models: spec.models.clone(),
        backends,
        key_selector: spec
            .key_selector
            .clone()
            .map(|s| s.match_labels)
            .unwrap_or_default(),
        limits: spec.limits.as_ref().map(compile_limits),
        load_balancing: load_balancing(spec.load_balancing).into(),
        retry: Some(compile_retry(spec.retries.as_ref())?),
        fallbacks,
        audit_text: spec.audit.as_ref().is_some_and(|a| a.include_text),
        cache: spec
            .cache
            .as_ref()
            .map(|c| compile_cache(c, key, pools, rejected_pools))
            .transpose()?,
        // Filled by the caller (`tenancy::admit`).
        key_namespaces: Vec::new(),
        key_namespaces_all: false,
    })
}

fn compile_cache(
    c: &crate::CacheSpec,
    key: &ResourceKey,
    pools: &BTreeMap<&str, &pb::Pool>,
    rejected_pools: &BTreeSet<String>,
) -> Result<pb::CachePolicy, Reject> {
    use crate::{CacheMode, CacheScope};
    let mode = match c.mode {
        CacheMode::Off => pb::CacheMode::Off,
        CacheMode::Exact => pb::CacheMode::Exact,
        CacheMode::Semantic => pb::CacheMode::Semantic,
    };
    let similarity = c.similarity_threshold.unwrap_or(0.9);
    if !(similarity > 0.0 && similarity <= 1.0) {
        return Err(Reject::spec(
            "Invalid",
            format!("spec.cache.similarityThreshold: above 0 and at most 1, not {similarity}"),
        ));
    }
    let (embedding_pool, embedding_model) = match &c.embedding {
        None => (String::new(), String::new()),
        Some(e) => {
            if mode != pb::CacheMode::Semantic {
                return Err(Reject::spec(
                    "Invalid",
                    "spec.cache.embedding: only with mode Semantic",
                ));
            }
            if e.model.trim().is_empty() {
                return Err(Reject::spec(
                    "Invalid",
                    "spec.cache.embedding.model: the embedding model to ask the pool for",
                ));
            }
            let (pool_id, _) = pool_ref(
                "spec.cache.embedding.pool",
                &e.pool,
                key,
                pools,
                rejected_pools,
            )?;
            (pool_id, e.model.clone())
        }
    };
    if c.max_entries == Some(0) {
        return Err(Reject::spec(
            "Invalid",
            "spec.cache.maxEntries: at least 1 (unset: no count limit)",
        ));
    }
    let ttl = match &c.ttl {
        Some(t) => validate::duration("spec.cache.ttl", t)?,
        None => std::time::Duration::from_secs(3600),
    };
    if ttl.is_zero() {
        return Err(Reject::spec("Invalid", "spec.cache.ttl: longer than zero"));
    }
    let scope = match c.scope.unwrap_or(CacheScope::Key) {
        CacheScope::Key => pb::CacheScope::Key,
        CacheScope::Route => pb::CacheScope::Route,
        CacheScope::Label => pb::CacheScope::Label,
    };
    let label = c.scope_label.clone().unwrap_or_default();
    if scope == pb::CacheScope::Label && label.trim().is_empty() {
        return Err(Reject::spec(
            "Invalid",
            "spec.cache.scopeLabel: scope Label needs the key label to share by",
        ));
    }
    if let Some(t) = c.max_temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(Reject::spec(
            "Invalid",
            format!("spec.cache.maxTemperature: between 0 and 2, not {t}"),
        ));
    }
    Ok(pb::CachePolicy {
        mode: mode.into(),
        ttl_ms: ttl.as_millis() as u64,
        scope: scope.into(),
        scope_label: label,
        max_temperature: c.max_temperature,
        skip_streaming: c.streaming == Some(false),
        similarity_threshold: similarity,
        text: match c.text.unwrap_or(crate::CacheText::LastUserMessage) {
            crate::CacheText::LastUserMessage => pb::CacheText::LastUserMessage,
            crate::CacheText::Conversation => pb::CacheText::Conversation,
        }
        .into(),
        max_entries: c.max_entries.unwrap_or(0),
        embedding_pool,
        embedding_model,
    })
}

/// A pool a route names (in `field`), by its id: refused when it does not exist or was not
/// accepted.
fn pool_ref<'p>(
    field: &str,
    name: &str,
    key: &ResourceKey,
    pools: &BTreeMap<&str, &'p pb::Pool>,
    rejected_pools: &BTreeSet<String>,
) -> Result<(String, &'p pb::Pool), Reject> {
    let pool_id = format!("{}/{}", key.namespace, name);
    match pools.get(pool_id.as_str()) {
        Some(pool) => Ok((pool_id, pool)),
        None => {
            let (reason, what) = if rejected_pools.contains(&pool_id) {
                ("PoolNotAccepted", "is not accepted")
            } else {
                ("PoolNotFound", "does not exist")
            };
            Err(Reject::refs(
                reason,
                format!("{field}: ProviderPool {pool_id} {what}"),
            ))
        }
    }
}

/// The backends of a route or of one of its fallback groups (`field` names the list).
fn compile_backends(
    field: &str,
    list: &[crate::RouteBackend],
    key: &ResourceKey,
    pools: &BTreeMap<&str, &pb::Pool>,
    rejected_pools: &BTreeSet<String>,
) -> Result<Vec<pb::Backend>, Reject> {
    if list.is_empty() {
        return Err(Reject::spec(
            "Invalid",
            format!("{field}: at least one backend is required"),
        ));
    }
    let mut backends = Vec::new();
    for (i, b) in list.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let weight = validate::weight(&format!("{field}.weight"), b.weight.unwrap_or(1))?;
        if let Some(m) = &b.model {
            validate::model_glob(&format!("{field}.model"), m)?;
            if m.contains(['*', '?']) {
                return Err(Reject::spec(
                    "Invalid",
                    format!("{field}.model: must be an exact name"),
                ));
            }
        }
        let (pool_id, pool) = pool_ref(
            &format!("{field}.pool"),
            &b.pool,
            key,
            pools,
            rejected_pools,
        )?;
        if let Some(m) = &b.model
            && !pool.models.is_empty()
            && !pool
                .models
                .iter()
                .any(|pm| &pm.name == m || pm.aliases.contains(m))
        {
            return Err(Reject::refs(
                "ModelNotServed",
                format!("{field}.model: ProviderPool {pool_id} does not serve {m:?}"),
            ));
        }
        backends.push(pb::Backend {
            pool: pool_id,
            model: b.model.clone().unwrap_or_default(),
            weight,
        });
    }
    if backends.iter().all(|b| b.weight == 0) {
        return Err(Reject::spec(
            "NoWeight",
            format!("{field}: every backend has weight 0"),
        ));
    }
    Ok(backends)
}
