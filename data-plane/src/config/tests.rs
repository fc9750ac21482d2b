use super::*;
use crate::providers::{Auth, Provider};
use crate::route::table::{BackendEntry, RouteEntry};
use std::collections::BTreeMap;

fn pool(id: &str, provider: pb::ProviderKind, url: &str) -> pb::Pool {
    pb::Pool {
        id: id.into(),
        provider: provider.into(),
        endpoints: if url.is_empty() {
            vec![]
        } else {
            vec![pb::Endpoint {
                url: url.into(),
                weight: 1,
                credential: "sk-up".into(),
                ..Default::default()
            }]
        },
        models: vec![
            pb::Model {
                name: "m1".into(),
                ..Default::default()
            },
            pb::Model {
                name: "m2".into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

fn snapshot() -> pb::Snapshot {
    pb::Snapshot {
        version: "v1".into(),
        pools: vec![
            pool(
                "ns/a",
                pb::ProviderKind::Openai,
                "https://api.openai.com/v1",
            ),
            pool("ns/b", pb::ProviderKind::Mock, ""),
        ],
        routes: vec![
            pb::Route {
                id: "ns/exact".into(),
                models: vec!["gpt-4o".into()],
                backends: vec![
                    pb::Backend {
                        pool: "ns/a".into(),
                        model: "m1".into(),
                        weight: 3,
                    },
                    pb::Backend {
                        pool: "ns/b".into(),
                        model: String::new(),
                        weight: 1,
                    },
                ],
                key_selector: BTreeMap::new(),
                ..Default::default()
            },
            pb::Route {
                id: "ns/glob".into(),
                models: vec!["gpt-*".into(), "m*".into()],
                backends: vec![pb::Backend {
                    pool: "ns/b".into(),
                    model: String::new(),
                    weight: 1,
                }],
                key_selector: BTreeMap::from([("team".to_owned(), "x".to_owned())]),
                ..Default::default()
            },
        ],
        keys: vec![pb::VirtualKey {
            id: "ns/k".into(),
            key_sha256: switchyard_crds::key_hash("sk-test-key"),
            labels: BTreeMap::from([("team".to_owned(), "x".to_owned())]),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A key of the routes' namespace, with no labels.
fn tenant() -> KeyEntry {
    KeyEntry {
        id: "ns/any".into(),
        ..KeyEntry::default()
    }
}

#[test]
fn exact_routes_win_over_globs() {
    let cfg = valid(&snapshot());
    assert_eq!(
        cfg.routes()
            .route_for(&tenant(), "gpt-4o")
            .map(|r| r.id.as_str()),
        Some("ns/exact")
    );
    assert_eq!(
        cfg.routes()
            .route_for(&tenant(), "gpt-4o-mini")
            .map(|r| r.id.as_str()),
        Some("ns/glob")
    );
    assert!(cfg.routes().route_for(&tenant(), "claude").is_none());
}

fn pick(route: &RouteEntry) -> Option<&BackendEntry> {
    crate::health::balance::choose(route.strategy, &route.backends, |_| true, &route.turn)
        .map(|i| &route.backends[i])
}

#[test]
fn weighted_backends_follow_weights() {
    let cfg = valid(&snapshot());
    let route = cfg.routes().route_for(&tenant(), "gpt-4o").expect("route");
    let n = 4000;
    let to_a = (0..n)
        .filter(|_| pick(route).is_some_and(|b| b.pool.id == "ns/a"))
        .count();
    // Expect 3000 (sd ~27); a broken picker lands far away.
    assert!(
        (2700..3300).contains(&to_a),
        "{to_a} of {n} went to the weight-3 backend"
    );
}

#[test]
fn keys_are_found_by_hash_and_selectors_apply() {
    let cfg = valid(&snapshot());
    let hash: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(
        sha2::Sha256::default(),
        b"sk-test-key",
    ))
    .into();
    let key = cfg.keys().get(&hash).expect("key by hash");
    assert!(
        cfg.routes()
            .route_for(&tenant(), "gpt-x")
            .is_some_and(|r| r.selects(key))
    );
    let stranger = KeyEntry {
        id: "ns/x".into(),
        ..KeyEntry::default()
    };
    assert!(
        !cfg.routes()
            .route_for(&tenant(), "gpt-x")
            .is_some_and(|r| r.selects(&stranger))
    );
    assert_eq!(
        cfg.routes().models_for(key),
        vec!["gpt-4o".to_owned(), "m1".to_owned(), "m2".to_owned()]
    );
    assert_eq!(
        cfg.routes().models_for(&stranger),
        vec!["gpt-4o".to_owned()]
    );
    // A route allow-list narrows what the selector admits.
    let only_exact = KeyEntry {
        id: "ns/y".into(),
        allowed_routes: vec!["ns/ex*".into()],
        labels: BTreeMap::from([("team".to_owned(), "x".to_owned())]),
        ..KeyEntry::default()
    };
    assert!(
        !cfg.routes()
            .route_for(&tenant(), "gpt-x")
            .is_some_and(|r| r.selects(&only_exact))
    );
    assert_eq!(
        cfg.routes().models_for(&only_exact),
        vec!["gpt-4o".to_owned()]
    );
}

#[test]
fn invalid_resources_are_left_out_one_by_one_and_the_rest_runs() {
    let mut s = snapshot();
    s.pools[0].endpoints[0].url = "not a url".into();
    s.pools.push(pb::Pool {
        id: "ns/gem".into(),
        provider: pb::ProviderKind::Gemini.into(),
        ..Default::default()
    });
    s.keys[0].key_sha256 = "zz".into();
    s.resources = vec![
        pb::ResourceRef {
            kind: "ProviderPool".into(),
            namespace: "ns".into(),
            name: "a".into(),
            generation: 7,
        },
        pb::ResourceRef {
            kind: "VirtualKey".into(),
            namespace: "ns".into(),
            name: "k".into(),
            generation: 3,
        },
    ];
    let (cfg, errors) = RuntimeConfig::build(&s, &Carried::default());
    let kinds: Vec<(&str, &str, i64)> = errors
        .iter()
        .map(|e| (e.kind, e.id.as_str(), e.generation))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("ProviderPool", "ns/a", 7),
            ("ProviderPool", "ns/gem", 0),
            ("VirtualKey", "ns/k", 3)
        ]
    );
    // What is valid runs: the route keeps the backend whose pool loaded.
    let route = cfg
        .routes()
        .route_for(&tenant(), "gpt-4o")
        .expect("the route still runs");
    assert_eq!(route.backends.len(), 1);
    assert_eq!(pick(route).map(|b| b.pool.id.as_str()), Some("ns/b"));
    assert_eq!(cfg.key_count(), 0);

    // A route left with no backend is left out itself, and says which pool is missing.
    s.routes[0].backends.pop();
    let (cfg, errors) = RuntimeConfig::build(&s, &Carried::default());
    let route = errors
        .iter()
        .find(|e| e.kind == "LLMRoute")
        .expect("route rejected");
    assert_eq!(route.id, "ns/exact");
    assert!(route.message.contains("ns/a"), "{}", route.message);
    assert!(
        cfg.routes()
            .route_for(&tenant(), "gpt-4o")
            .is_some_and(|r| r.id == "ns/glob"),
        "the glob route answers instead"
    );
}

#[test]
fn credentials_never_print() {
    let cfg = valid(&snapshot());
    let route = cfg.routes().route_for(&tenant(), "gpt-4o").expect("route");
    let dbg = format!("{:?}", route.backends[0].pool);
    assert!(!dbg.contains("sk-up"), "{dbg}");
}

#[test]
fn auth_and_framing_are_data_on_the_pool() {
    let mut s = snapshot();
    s.pools.push(pb::Pool {
        id: "ns/br".into(),
        provider: pb::ProviderKind::Bedrock.into(),
        region: "us-east-1".into(),
        endpoints: vec![pb::Endpoint {
            url: "https://bedrock-runtime.us-east-1.amazonaws.com".into(),
            weight: 1,
            aws: Some(pb::AwsCredentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: "aws-secret-key".into(),
                session_token: String::new(),
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    s.pools.push(pb::Pool {
        id: "ns/gem".into(),
        provider: pb::ProviderKind::Gemini.into(),
        endpoints: vec![pb::Endpoint {
            url: "https://generativelanguage.googleapis.com".into(),
            weight: 1,
            credential: "gem-key".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    for (id, _) in [("ns/br", ()), ("ns/gem", ())] {
        s.routes.push(pb::Route {
            id: format!("{id}-route"),
            models: vec![id.replace("ns/", "")],
            backends: vec![pb::Backend {
                pool: id.into(),
                model: String::new(),
                weight: 1,
            }],
            ..Default::default()
        });
    }
    let cfg = valid(&s);
    let pool = |m: &str| {
        cfg.routes()
            .route_for(&tenant(), m)
            .expect("route")
            .backends[0]
            .pool
            .clone()
    };
    let br = pool("br");
    assert_eq!(
        br.provider,
        Provider::Bedrock {
            region: "us-east-1".into()
        }
    );
    assert_eq!(br.provider.framing(), crate::upstream::Framing::EventStream);
    assert!(matches!(br.endpoints[0].auth, Auth::SigV4(_)));
    let gem = pool("gem");
    assert_eq!(
        gem.provider,
        Provider::Gemini {
            api_version: "v1beta".into()
        }
    );
    assert!(
        matches!(&gem.endpoints[0].auth, Auth::Header { name, .. } if name == "x-goog-api-key")
    );
    assert_eq!(gem.provider.framing(), crate::upstream::Framing::Sse);
    let dbg = format!("{:?} {:?}", br, gem);
    assert!(
        !dbg.contains("aws-secret-key") && !dbg.contains("gem-key"),
        "{dbg}"
    );
    // Without a region a Bedrock pool is invalid.
    if let Some(p) = s.pools.iter_mut().find(|p| p.id == "ns/br") {
        p.region.clear();
    }
    let (_, errors) = RuntimeConfig::build(&s, &Carried::default());
    let pool = errors
        .iter()
        .find(|e| e.id == "ns/br")
        .expect("the pool is left out");
    assert!(pool.message.contains("region"), "{}", pool.message);
}

/// Builds a snapshot that must be entirely valid.
fn valid(s: &pb::Snapshot) -> RuntimeConfig {
    let (cfg, errors) = RuntimeConfig::build(s, &Carried::default());
    assert!(errors.is_empty(), "{errors:?}");
    cfg
}

#[test]
fn a_delta_moves_the_config_forward_touching_only_what_it_names() {
    let s = snapshot();
    let (base, _) = RuntimeConfig::build(&s, &Carried::default());
    let hash = |k: &str| {
        let mut h = [0u8; 32];
        hex::decode_to_slice(switchyard_crds::key_hash(k), &mut h).expect("hex");
        h
    };
    assert!(base.keys().get(&hash("sk-test-key")).is_some());
    let delta = pb::Delta {
        base_version: "v1".into(),
        keys: vec![pb::VirtualKey {
            id: "ns/k2".into(),
            key_sha256: switchyard_crds::key_hash("sk-second-key"),
            ..Default::default()
        }],
        routes: vec![pb::Route {
            id: "ns/new".into(),
            models: vec!["brand-new".into()],
            backends: vec![pb::Backend {
                pool: "ns/b".into(),
                model: String::new(),
                weight: 1,
            }],
            key_selector: BTreeMap::new(),
            ..Default::default()
        }],
        removed: vec![pb::ResourceRef {
            kind: "VirtualKey".into(),
            namespace: "ns".into(),
            name: "k".into(),
            generation: 0,
        }],
        ..Default::default()
    };
    let (next, rejected) = base.apply_delta(&delta, "v2", &Carried::default());
    assert!(rejected.is_empty());
    assert_eq!(next.version, "v2");
    assert!(next.keys().get(&hash("sk-test-key")).is_none(), "removed");
    assert!(next.keys().get(&hash("sk-second-key")).is_some(), "added");
    assert!(next.routes().route_for(&tenant(), "brand-new").is_some());
    assert!(
        next.routes()
            .route_for(&tenant(), "gpt-4o")
            .is_some_and(|r| r.id == "ns/exact")
    );
    // Unchanged pools are the same entries (their connections survive the delta).
    let pool = |c: &RuntimeConfig| {
        c.routes()
            .route_for(&tenant(), "gpt-4o")
            .map(|r| r.backends[0].pool.clone())
            .expect("pool")
    };
    assert!(Arc::ptr_eq(&pool(&base), &pool(&next)));
    // The base is untouched.
    assert!(
        base.keys().get(&hash("sk-test-key")).is_some()
            && base.routes().route_for(&tenant(), "brand-new").is_none()
    );

    // A changed pool that cannot load here is NACKed with the delta's generation, and the
    // route that only it served goes with it; removing the pool clears both.
    let mut broken = s.pools[0].clone();
    broken.endpoints[0].url = "not a url".into();
    let delta = pb::Delta {
        base_version: "v2".into(),
        pools: vec![broken],
        resources: vec![pb::ResourceRef {
            kind: "ProviderPool".into(),
            namespace: "ns".into(),
            name: "a".into(),
            generation: 4,
        }],
        ..Default::default()
    };
    let (third, rejected) = next.apply_delta(&delta, "v3", &Carried::default());
    let ids: Vec<(&str, &str, i64)> = rejected
        .iter()
        .map(|r| (r.kind, r.id.as_str(), r.generation))
        .collect();
    assert_eq!(ids, vec![("ProviderPool", "ns/a", 4)]);
    assert_eq!(
        third
            .routes()
            .route_for(&tenant(), "gpt-4o")
            .map(|r| r.backends.len()),
        Some(1),
        "the route keeps its other backend"
    );
    let gone = pb::Delta {
        base_version: "v3".into(),
        removed: vec![pb::ResourceRef {
            kind: "ProviderPool".into(),
            namespace: "ns".into(),
            name: "a".into(),
            generation: 0,
        }],
        ..Default::default()
    };
    let (_, rejected) = third.apply_delta(&gone, "v4", &Carried::default());
    assert!(rejected.is_empty(), "{rejected:?}");
}

/// Two tenants: what `evil` declares never answers `victim`'s keys, whatever it claims.
#[test]
fn a_route_of_another_namespace_never_answers_unless_both_sides_agree() {
    let route = |id: &str, models: &[&str], all: bool| pb::Route {
        id: id.into(),
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        backends: vec![pb::Backend {
            pool: "ns/b".into(),
            model: String::new(),
            weight: 1,
        }],
        key_namespaces_all: all,
        ..Default::default()
    };
    let mut s = snapshot();
    s.routes = vec![
        route("victim/chat", &["gpt-*"], false),
        // An exact name beating the victim's glob, admitting every namespace.
        route("evil/capture", &["gpt-4o", "claude-*", "*"], true),
        route("shared/models", &["shared-*", "gpt-4o"], true),
        route("closed/models", &["closed-*"], false),
    ];
    let cfg = valid(&s);
    let key = |id: &str, allowed: &[&str]| KeyEntry {
        id: id.into(),
        allowed_routes: allowed.iter().map(|a| (*a).to_owned()).collect(),
        ..KeyEntry::default()
    };
    let victim = key("victim/app", &[]);
    let id = |k: &KeyEntry, m: &str| cfg.routes().route_for(k, m).map(|r| r.id.clone());
    // The victim's own glob answers, the other namespace's exact name and `*` do not.
    assert_eq!(id(&victim, "gpt-4o").as_deref(), Some("victim/chat"));
    assert_eq!(
        id(&victim, "claude-opus-4-1"),
        None,
        "unknown to the victim"
    );
    assert_eq!(id(&victim, "shared-x"), None, "not named by the key");
    assert_eq!(cfg.routes().models_for(&victim), Vec::<String>::new());
    // A key naming another namespace's route reaches it when that route admits it, after
    // its own namespace's routes.
    let sharing = key("victim/sharing", &["victim/*", "shared/models", "closed/*"]);
    assert_eq!(id(&sharing, "gpt-4o").as_deref(), Some("victim/chat"));
    assert_eq!(id(&sharing, "shared-x").as_deref(), Some("shared/models"));
    assert_eq!(id(&sharing, "closed-x"), None, "closed does not admit it");
    // The attacker's own keys reach the attacker's routes, and nothing of the victim's.
    let evil = key("evil/k", &["victim/*"]);
    assert_eq!(id(&evil, "gpt-4o").as_deref(), Some("evil/capture"));
    assert_eq!(id(&evil, "anything").as_deref(), Some("evil/capture"));
    let chat = cfg
        .routes()
        .route_for(&victim, "gpt-4o")
        .expect("victim route");
    assert!(
        !chat.selects(&evil),
        "naming a route is not enough: it must admit"
    );
}

/// A key rebuilt by a new config version counts its requests in flight with the counters of
/// the entry it replaces (a concurrency share cannot be reset by pushing config), and keys of
/// one namespace share its counter.
#[test]
fn rebuilt_keys_keep_their_requests_in_flight() {
    let mut s = snapshot();
    let carried = Carried::default();
    let (first, _) = RuntimeConfig::build(&s, &carried);
    let mut h = [0u8; 32];
    hex::decode_to_slice(switchyard_crds::key_hash("sk-test-key"), &mut h).expect("hex");
    let old = first.keys().get(&h).expect("key").clone();
    old.in_flight
        .key
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    s.keys[0].labels.insert("changed".into(), "yes".into());
    let (second, _) = RuntimeConfig::build(&s, &carried);
    drop(first);
    let new = second.keys().get(&h).expect("key");
    assert!(!Arc::ptr_eq(&old, new), "a new entry");
    assert_eq!(
        new.in_flight.key.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the request in flight under the old entry still counts"
    );
    let other = Carried::default().in_flight.counters("ns/other");
    assert!(!Arc::ptr_eq(&other.namespace, &new.in_flight.namespace));
    let same_ns = carried.in_flight.counters("ns/other");
    assert!(Arc::ptr_eq(&same_ns.namespace, &new.in_flight.namespace));
}
