//! Reads each budgeted VirtualKey's spend in its current period from the Redis the data planes
//! settle into, for the key's status. One pipelined round trip per thousand keys.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use kube::ResourceExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use switchyard_crds::spend::{self, Period};
use switchyard_crds::{SpendStatus, VirtualKey, validate};

enum Conn {
    Single(ConnectionManager),
    Cluster(Box<Cluster>),
}

struct Cluster {
    client: ClusterClient,
    conn: tokio::sync::OnceCell<ClusterConnection>,
}

/// A Redis connection for reading spend.
pub struct SpendReader {
    conn: Conn,
    timeout: Duration,
}

impl std::fmt::Debug for SpendReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpendReader").finish_non_exhaustive()
    }
}

impl SpendReader {
    /// Connects lazily: a Redis that is down only delays the spend in status. With
    /// `cluster`, `url` is a comma-separated list of Redis Cluster seed nodes.
    pub fn new(url: &str, cluster: bool, timeout: Duration) -> anyhow::Result<Self> {
        let invalid =
            |e: redis::RedisError| anyhow::anyhow!("invalid --redis-url ({:?})", e.kind());
        let conn = if cluster {
            let client = ClusterClient::builder(url.split(',').map(str::trim))
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()
                .map_err(invalid)?;
            Conn::Cluster(Box::new(Cluster {
                client,
                conn: tokio::sync::OnceCell::new(),
            }))
        } else {
            let client = redis::Client::open(url).map_err(invalid)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1);
            Conn::Single(ConnectionManager::new_lazy_with_config(client, config)?)
        };
        Ok(Self { conn, timeout })
    }

    /// `HGET key s` for each key: one pipeline on a single endpoint; on a cluster, where a
    /// pipeline may not cross slots, 64 concurrent reads.
    async fn settled(&self, keys: Vec<String>) -> anyhow::Result<Vec<Option<i64>>> {
        match &self.conn {
            Conn::Single(c) => {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("HGET").arg(k).arg("s");
                }
                Ok(pipe.query_async(&mut c.clone()).await?)
            }
            Conn::Cluster(c) => {
                let conn = c
                    .conn
                    .get_or_try_init(|| c.client.get_async_connection())
                    .await?;
                let reads = keys.into_iter().map(|k| {
                    let mut conn = conn.clone();
                    async move {
                        redis::cmd("HGET")
                            .arg(k)
                            .arg("s")
                            .query_async::<Option<i64>>(&mut conn)
                            .await
                    }
                });
                Ok(futures_util::stream::iter(reads)
                    .buffered(64)
                    .try_collect()
                    .await?)
            }
        }
    }

    /// Spend of every key with a budget, by `namespace/name`. Keys without a budget are
    /// absent (their spend is not tracked).
    pub async fn read(
        &self,
        keys: &[Arc<VirtualKey>],
        now_unix: i64,
    ) -> anyhow::Result<HashMap<String, SpendStatus>> {
        let budgeted: Vec<(String, Period, u64)> = keys
            .iter()
            .filter_map(|vk| {
                let b = vk.spec.budget.as_ref()?;
                let amount = validate::price_micros("amount", &b.amount).ok()? * 1000;
                let id = format!("{}/{}", vk.namespace()?, vk.name_any());
                Some((
                    id,
                    spend::period(spend::proto_period(b.period), now_unix),
                    amount,
                ))
            })
            .collect();
        let mut out = HashMap::with_capacity(budgeted.len());
        for chunk in budgeted.chunks(1000) {
            let keys = chunk
                .iter()
                .map(|(id, period, _)| spend::spend_key(id, &period.id))
                .collect();
            let spent = tokio::time::timeout(self.timeout, self.settled(keys))
                .await
                .map_err(|_| anyhow::anyhow!("reading spend from Redis timed out"))??;
            for ((id, period, amount), s) in chunk.iter().zip(spent) {
                let s = s.unwrap_or(0);
                out.insert(
                    id.clone(),
                    SpendStatus {
                        amount: spend::usd(s),
                        period: period.id.clone(),
                        exceeded: s >= 0 && s as u64 >= *amount,
                    },
                );
            }
        }
        Ok(out)
    }
}

/// While leading, reads spend every `every` into the context, and reconciles the keys whose
/// status shows another amount. A failed read keeps the last one (and the status).
pub async fn follow(
    ctx: Arc<super::context::Context>,
    reader: Arc<SpendReader>,
    triggers: super::triggers::Triggers,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !ctx.leadership.leads() {
            continue;
        }
        let keys = ctx.stores.keys.state();
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let read = match reader.read(&keys, now_unix).await {
            Ok(m) => Arc::new(m),
            Err(e) => {
                tracing::warn!(error = %e, "reading spend from Redis failed; keeping the spend in status");
                continue;
            }
        };
        ctx.set_spend(read.clone());
        for vk in &keys {
            let current = vk.status.as_ref().and_then(|s| s.spend.as_ref());
            if read.get(&super::key::spend_id(vk)) != current {
                triggers.key(kube::runtime::reflector::ObjectRef::from_obj(vk.as_ref()));
            }
        }
    }
}
