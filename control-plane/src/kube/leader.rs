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

/// Whether this replica leads, and until when it may act on it: the last renewal plus the
/// lease duration, less a safety margin for clock drift. A write is fenced on it, so a
/// replica that lost the API server stops writing before another may have taken over.
#[derive(Clone, Debug)]
pub struct Leadership(watch::Receiver<Option<tokio::time::Instant>>);

impl Leadership {
    /// True while this replica holds a lease that has not run out.
    pub fn leads(&self) -> bool {
        self.0
            .borrow()
            .is_some_and(|until| tokio::time::Instant::now() < until)
    }

    /// Resolves when leadership is gained or lost.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }

    /// A fixed answer, for tests.
    pub fn fixed(leads: bool) -> Self {
        let until = leads.then(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        // The value outlives the dropped sender.
        Self(watch::channel(until).1)
    }
}

/// Starts the election; the returned [`Leadership`] follows it. When `shutdown` resolves the
/// task releases the lease if this replica holds it, so that another replica leads at once
/// instead of when the lease runs out; await the handle before exiting.
pub fn start(
    client: kube::Client,
    s: LeaseSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(elect(client, s, tx, shutdown));
    (Leadership(rx), task)
}

/// How much of a lease this replica leaves unused before it stops acting as leader.
fn margin(duration: Duration) -> Duration {
    (duration / 5).max(Duration::from_millis(100))
}

async fn elect(
    client: kube::Client,
    s: LeaseSettings,
    until: watch::Sender<Option<tokio::time::Instant>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &s.namespace);
    tokio::pin!(shutdown);
    loop {
        let attempt = tokio::time::Instant::now();
        match try_lead(&api, &s).await {
            Ok(true) => {
                let valid = attempt + s.duration.saturating_sub(margin(s.duration));
                // A renewal moves the deadline silently; only a transition wakes receivers.
                if until.send_if_modified(|v| v.replace(valid).is_none()) {
                    tracing::info!(identity = %s.identity, leader = true, "leadership changed");
                }
            }
            Ok(false) => {
                if until.send_if_modified(|v| v.take().is_some()) {
                    tracing::info!(identity = %s.identity, leader = false, "leadership changed");
                }
            }
            Err(e) => {
                // Writes are fenced on the deadline of the last renewal, so they stop by
                // themselves before another replica can have taken over; once it passed,
                // leadership is given up explicitly.
                tracing::warn!(error = %e, "lease renewal failed");
                let lapsed = until
                    .borrow()
                    .is_some_and(|t| tokio::time::Instant::now() >= t);
                if lapsed && until.send_if_modified(|v| v.take().is_some()) {
                    tracing::warn!(identity = %s.identity, "lost leadership: lease not renewed in time");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(s.renew_every()) => {}
            () = &mut shutdown => {
                let held = until.send_replace(None).is_some();
                // Fenced writes in flight finish against a lease still ours; new ones see None.
                if held {
                    match release(&api, &s).await {
                        Ok(()) => tracing::info!(identity = %s.identity, "released the leader lease"),
                        Err(e) => tracing::warn!(error = %e, "releasing the leader lease failed; another replica takes over when it runs out"),
                    }
                }
                return;
            }
        }
    }
}

/// Gives the lease up: no holder, so the next replica to look takes it.
async fn release(api: &Api<Lease>, s: &LeaseSettings) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&s.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(s.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    spec.lease_duration_seconds = Some(1);
    api.replace(&s.name, &PostParams::default(), &lease).await?;
    Ok(())
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
