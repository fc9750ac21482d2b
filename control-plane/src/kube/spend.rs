//! Reads each budgeted VirtualKey's spend in its current period from the Redis the data planes
//! settle into, for the key's status. One pipelined round trip per thousand keys.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use switchyard_crds::spend::{self, Period};
use switchyard_crds::{SpendStatus, VirtualKey, validate};

/// A Redis connection for reading spend.
pub struct SpendReader {
    conn: ConnectionManager,
    timeout: Duration,
}

impl std::fmt::Debug for SpendReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpendReader").finish_non_exhaustive()
    }
}

impl SpendReader {
    /// Connects lazily: a Redis that is down only delays the spend in status.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("invalid --redis-url ({:?})", e.kind()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self { conn, timeout })
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
            let mut pipe = redis::pipe();
            for (id, period, _) in chunk {
                pipe.cmd("HGET")
                    .arg(spend::spend_key(id, &period.id))
                    .arg("s");
            }
            let mut conn = self.conn.clone();
            let spent: Vec<Option<i64>> =
                tokio::time::timeout(self.timeout, pipe.query_async(&mut conn))
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
