//! The four controllers, on `kube::runtime::Controller`, fed by the same reflector streams as
//! the compile source (one watch per kind, one cache). Every replica runs them, because they
//! also fill the caches; only the leader writes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::Resource;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::context::{Context, Error, error_policy, no_extra};
use super::spend::SpendReader;
use super::status::{self, StatusObject};
use super::triggers::{self, Inputs, Triggers};
use super::{Touched, Watches, key};

/// The reconcile of kinds that carry conditions only: ProviderPool, LLMRoute, Guardrail.
pub async fn reconcile_conditions<K: StatusObject>(
    obj: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let action = status::reconcile(obj.as_ref(), &ctx, no_extra()).await?;
    ctx.succeeded(obj.as_ref());
    Ok(action)
}

/// Settings of the controllers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Every object is reconciled this often even without a change.
    pub resync: Duration,
    /// Where spend is read from, and how often.
    pub spend: Option<(Arc<SpendReader>, Duration)>,
}

fn controller<K>(stream: Touched<K>, store: Store<K>, inputs: Inputs<K>) -> Controller<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    Controller::for_stream(stream, store)
        .reconcile_on(UnboundedReceiverStream::new(inputs.one))
        .reconcile_all_on(UnboundedReceiverStream::new(inputs.all))
}

async fn drain<K, E: std::fmt::Debug>(results: impl futures_util::Stream<Item = Result<K, E>>) {
    results
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = ?e, "controller");
            }
        })
        .await;
}

/// Runs the controllers, the triggers and the spend reader until `stop` turns true.
pub async fn run(
    ctx: Arc<Context>,
    watches: Watches,
    settings: Settings,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let shutdown = move || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let (triggers, inputs) = Triggers::new();
    let stores = ctx.stores.clone();
    let pools = controller(watches.pools, stores.pools, inputs.pools)
        .graceful_shutdown_on(shutdown())
        .run(reconcile_conditions, error_policy, ctx.clone());
    let routes = controller(watches.routes, stores.routes, inputs.routes)
        .graceful_shutdown_on(shutdown())
        .run(reconcile_conditions, error_policy, ctx.clone());
    let guardrails = controller(watches.guardrails, stores.guardrails, inputs.guardrails)
        .graceful_shutdown_on(shutdown())
        .run(reconcile_conditions, error_policy, ctx.clone());
    let keys = controller(watches.keys, stores.keys, inputs.keys)
        .owns_stream(watches.secrets)
        .graceful_shutdown_on(shutdown())
        .run(key::reconcile, error_policy, ctx.clone());
    if let Some((reader, every)) = settings.spend {
        tokio::spawn(super::spend::follow(
            ctx.clone(),
            reader,
            triggers.clone(),
            every,
        ));
    }
    tokio::spawn(triggers::run(ctx, triggers, settings.resync));
    // Namespace labels feed the compile (route selectors) through the change counter.
    let namespaces = drain(watches.namespaces);
    tokio::join!(
        drain(pools),
        drain(routes),
        drain(guardrails),
        drain(keys),
        namespaces
    );
}
