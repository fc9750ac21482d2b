//! Deltas between two compile results, as incremental xDS sends them: the resources added or
//! changed (whole), and the ones removed. Both snapshots keep every list sorted by id, so a
//! delta is one merge per list over the per-resource hashes.

use std::cmp::Ordering;
use switchyard_proto::ResourceKind;

use switchyard_proto::v1 as pb;

use crate::compile::Compiled;

/// What a data plane holding `from` needs to hold `to`.
pub fn delta(from: &Compiled, to: &Compiled) -> pb::Delta {
    let mut d = pb::Delta {
        base_version: from.snapshot.version.clone(),
        ..Default::default()
    };
    let (a, b) = (&from.snapshot, &to.snapshot);
    let (ha, hb) = (&from.hashes, &to.hashes);
    let mut removed = Vec::new();
    let mut changed = Vec::new();
    d.pools = diff(
        ResourceKind::ProviderPool.as_str(),
        (&a.pools, &ha.pools),
        (&b.pools, &hb.pools),
        |p| &p.id,
        &mut changed,
        &mut removed,
    );
    d.routes = diff(
        ResourceKind::LlmRoute.as_str(),
        (&a.routes, &ha.routes),
        (&b.routes, &hb.routes),
        |r| &r.id,
        &mut changed,
        &mut removed,
    );
    d.keys = diff(
        ResourceKind::VirtualKey.as_str(),
        (&a.keys, &ha.keys),
        (&b.keys, &hb.keys),
        |k| &k.id,
        &mut changed,
        &mut removed,
    );
    d.guardrails = diff(
        ResourceKind::Guardrail.as_str(),
        (&a.guardrails, &ha.guardrails),
        (&b.guardrails, &hb.guardrails),
        |g| &g.id,
        &mut changed,
        &mut removed,
    );
    d.removed = removed
        .into_iter()
        .map(|(kind, id)| reference(kind, id, 0))
        .collect();
    d.resources = changed
        .into_iter()
        .map(|(kind, id)| {
            let (ns, name) = id.split_once('/').unwrap_or(("", id));
            let generation = b
                .resources
                .binary_search_by(|r| {
                    (r.kind.as_str(), r.namespace.as_str(), r.name.as_str()).cmp(&(kind, ns, name))
                })
                .map_or(0, |i| b.resources[i].generation);
            reference(kind, id, generation)
        })
        .collect();
    d
}

fn reference(kind: &str, id: &str, generation: i64) -> pb::ResourceRef {
    let (namespace, name) = id.split_once('/').unwrap_or(("", id));
    pb::ResourceRef {
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        generation,
    }
}

/// One list: the items of `to` that are new or whose hash changed; the ids only in `from`
/// go to `removed`, the changed ones to `changed`.
fn diff<'a, T: Clone>(
    kind: &'static str,
    (from, from_hashes): (&'a [T], &[u64]),
    (to, to_hashes): (&'a [T], &[u64]),
    id: impl Fn(&T) -> &String,
    changed: &mut Vec<(&'static str, &'a str)>,
    removed: &mut Vec<(&'static str, &'a str)>,
) -> Vec<T> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < from.len() || j < to.len() {
        let order = match (from.get(i), to.get(j)) {
            (Some(a), Some(b)) => id(a).cmp(id(b)),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                removed.push((kind, id(&from[i]).as_str()));
                i += 1;
            }
            Ordering::Greater => {
                changed.push((kind, id(&to[j]).as_str()));
                out.push(to[j].clone());
                j += 1;
            }
            Ordering::Equal => {
                if from_hashes.get(i) != to_hashes.get(j) {
                    changed.push((kind, id(&to[j]).as_str()));
                    out.push(to[j].clone());
                }
                i += 1;
                j += 1;
            }
        }
    }
    out
}
