//! A link to the fleet's Redis, for the stores that share it (limits, the response cache): one
//! endpoint (a `ConnectionManager`: multiplexed, reconnecting) or a Redis Cluster (slot-aware,
//! following MOVED/ASK and topology changes, connected on first use). Scripts and commands go
//! through [`Conn`] either way; what differs is that a cluster cannot pipeline across slots and
//! has a keyspace per node.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// One endpoint or a cluster.
pub(crate) enum Link {
    Single(ConnectionManager),
    Cluster(Box<ClusterLink>),
}

/// A cluster's client and its connection, made on first use.
pub(crate) struct ClusterLink {
    client: ClusterClient,
    conn: tokio::sync::OnceCell<ClusterConnection>,
}

impl ClusterLink {
    pub(crate) fn new(client: ClusterClient) -> Self {
        Self {
            client,
            conn: tokio::sync::OnceCell::new(),
        }
    }
}

/// A connection of a [`Link`] (cheap to clone: both kinds are multiplexed).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URLs may carry a password: never printed.
        f.debug_struct("Link")
            .field("cluster", &self.is_cluster())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ClusterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLink")
            .field("connected", &self.conn.initialized())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "Conn::Single",
            Self::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl Link {
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// A connection (a cluster's is made on first use).
    pub(crate) async fn conn(&self) -> RedisResult<Conn> {
        match self {
            Self::Single(c) => Ok(Conn::Single(c.clone())),
            Self::Cluster(c) => Ok(Conn::Cluster(
                c.conn
                    .get_or_try_init(|| c.client.get_async_connection())
                    .await?
                    .clone(),
            )),
        }
    }

    /// Every key matching `pattern`: `SCAN` on the endpoint, or on each primary of a cluster.
    pub(crate) async fn keys_matching(&self, pattern: &str) -> RedisResult<Vec<String>> {
        let scan = |cursor: u64| {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            cmd
        };
        let mut keys = Vec::new();
        match self.conn().await? {
            Conn::Single(mut c) => {
                let mut cursor = 0;
                loop {
                    let (next, found): (u64, Vec<String>) =
                        scan(cursor).query_async(&mut c).await?;
                    keys.extend(found);
                    if next == 0 {
                        return Ok(keys);
                    }
                    cursor = next;
                }
            }
            Conn::Cluster(mut c) => {
                let nodes: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut c)
                    .await?;
                for (host, port) in primaries(&nodes) {
                    let mut cursor = 0;
                    loop {
                        let at = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        });
                        let reply = c.route_command(scan(cursor), at).await?;
                        let (next, found): (u64, Vec<String>) = redis::from_redis_value(reply)?;
                        keys.extend(found);
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
                Ok(keys)
            }
        }
    }
}

/// The primaries' addresses in a `CLUSTER NODES` reply (`<id> <host>:<port>@<bus> <flags> ...`).
fn primaries(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let addr = f.nth(1)?;
            let flags = f.next()?;
            if !flags.split(',').any(|x| x == "master") || flags.contains("fail") {
                return None;
            }
            let hostport = addr.split(['@', ',']).next()?;
            let (host, port) = hostport.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primaries_are_read_from_cluster_nodes() {
        let nodes = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                     b2 127.0.0.1:7001@17001,node-b master - 0 0 2 connected 5461-10922\n\
                     c3 127.0.0.1:7002@17002 slave a1 0 0 3 connected\n\
                     d4 127.0.0.1:7003@17003 master,fail - 0 0 4 disconnected\n";
        assert_eq!(
            primaries(nodes),
            vec![("127.0.0.1".into(), 7000), ("127.0.0.1".into(), 7001)]
        );
    }
}
