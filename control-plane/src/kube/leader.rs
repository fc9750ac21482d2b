//! Leader election on a `coordination.k8s.io/v1` Lease. Every replica serves config; only the
//! leader writes status, generates keys and records events.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

/// Settings of the election.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
}

impl LeaseSettings {
    fn renew_every(&self) -> Duration {
        (self.duration / 3).max(Duration::from_millis(200))
    }
}

/// What to do with a lease as read from the API server.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Ours (or free, or expired): write it with us as holder.
    Take { transition: bool },
    /// Someone else holds a live lease.
    Follow,
}

/// Pure decision: may `identity` hold this lease spec at `now`?
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Take { transition: true };
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == identity {
        return Decision::Take { transition: false };
    }
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(MicroTime(renew)), Some(secs)) => {
            let until = renew.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
                secs,
            )));
            until.map_or(true, |u| u < now)
        }
        _ => true,
    };
    if holder.is_empty() || expired {
        Decision::Take { transition: true }
    } else {
        Decision::Follow
    }
}

fn lease_spec(s: &LeaseSettings, previous: Option<&LeaseSpec>, transition: bool) -> LeaseSpec {
    let now = MicroTime(Timestamp::now());
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(s.identity.clone()),
        lease_duration_seconds: Some(
            i32::try_from(s.duration.as_secs().max(1)).unwrap_or(i32::MAX),
        ),
        acquire_time: if transition {
            Some(now.clone())
        } else {
            previous.and_then(|p| p.acquire_time.clone())
        },
        renew_time: Some(now),
        lease_transitions: Some(if transition && previous.is_some() {
            transitions + 1
        } else {
            transitions
        }),
        ..Default::default()
    }
}

async fn try_lead(api: &Api<Lease>, s: &LeaseSettings) -> Result<bool, kube::Error> {
    match api.get_opt(&s.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(s.name.clone()),
                    ..Default::default()
                },
                spec: Some(lease_spec(s, None, true)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => match decide(lease.spec.as_ref(), &s.identity, Timestamp::now()) {
            Decision::Follow => Ok(false),
            Decision::Take { transition } => {
                lease.spec = Some(lease_spec(s, lease.spec.as_ref(), transition));
                // `replace` carries the resourceVersion we read: a concurrent writer makes it 409.
                match api.replace(&s.name, &PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        },
    }
}

/// Runs the election forever, publishing whether this replica leads.
pub async fn run(client: kube::Client, s: LeaseSettings, leading: watch::Sender<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &s.namespace);
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        match try_lead(&api, &s).await {
            Ok(is_leader) => {
                if is_leader {
                    last_renewed = tokio::time::Instant::now();
                }
                if leading.send_if_modified(|l| std::mem::replace(l, is_leader) != is_leader) {
                    tracing::info!(identity = %s.identity, leader = is_leader, "leadership changed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed");
                // Without a renewal for a whole lease duration another replica may have taken over.
                if *leading.borrow() && last_renewed.elapsed() >= s.duration {
                    leading.send_replace(false);
                    tracing::warn!(identity = %s.identity, "lost leadership: lease not renewed in time");
                }
            }
        }
        tokio::time::sleep(s.renew_every()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    fn spec(holder: &str, renewed_ago: i64, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(
                Timestamp::now() - SignedDuration::from_secs(renewed_ago),
            )),
            lease_duration_seconds: Some(secs),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let now = Timestamp::now();
        assert_eq!(decide(None, "a", now), Decision::Take { transition: true });
        assert_eq!(
            decide(Some(&spec("a", 1, 15)), "a", now),
            Decision::Take { transition: false }
        );
        assert_eq!(decide(Some(&spec("b", 1, 15)), "a", now), Decision::Follow);
        assert_eq!(
            decide(Some(&spec("b", 30, 15)), "a", now),
            Decision::Take { transition: true }
        );
        assert_eq!(
            decide(Some(&spec("", 1, 15)), "a", now),
            Decision::Take { transition: true }
        );
    }
}
