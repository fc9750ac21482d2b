//! The VirtualKey controller (`Controller::for_stream(VirtualKey).owns_stream(Secret)`): the
//! leader generates a strong random key into the Secret a VirtualKey names, owned by the
//! VirtualKey (deleting the key deletes the Secret). A Secret that already exists (bring your
//! own key) is used as it is. Status carries the key prefix and the spend of the period.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use switchyard_crds::{SpendStatus, VirtualKey};

use super::context::{Context, Error};
use super::status::{self, Extra};

/// Prefix of generated keys.
pub const KEY_PREFIX: &str = "sk-sy-";

/// A new key: `sk-sy-` and 32 bytes from the OS CSPRNG, base64url.
pub fn generate_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The Secret to create for a VirtualKey.
pub fn key_secret(vk: &VirtualKey, key: &str) -> Option<Secret> {
    let owner = vk.controller_owner_ref(&())?;
    Some(Secret {
        metadata: ObjectMeta {
            name: Some(vk.spec.secret_ref.name.clone()),
            namespace: vk.namespace(),
            owner_references: Some(vec![owner]),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "switchyard".to_owned(),
                ),
                (switchyard_crds::SECRET_LABEL.to_owned(), "true".to_owned()),
                ("switchyard.dev/virtual-key".to_owned(), vk.name_any()),
            ])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            vk.spec.secret_ref.data_key().to_owned(),
            ByteString(key.as_bytes().to_vec()),
        )])),
        ..Default::default()
    })
}

/// The VirtualKey controller: while leading, creates the key Secret when it is missing, then
/// writes conditions, the key prefix and spend.
pub async fn reconcile(vk: Arc<VirtualKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ctx.leadership.leads() {
        mint(&vk, &ctx).await?;
    }
    let extra = key_extra(&vk, prefix(&vk, &ctx), ctx.spend().as_deref());
    let action = status::reconcile(vk.as_ref(), &ctx, extra).await?;
    ctx.succeeded(vk.as_ref());
    Ok(action)
}

/// Creates the key Secret if the VirtualKey names one that does not exist.
async fn mint(vk: &VirtualKey, ctx: &Context) -> Result<(), Error> {
    let Some(ns) = vk.namespace() else {
        return Ok(());
    };
    let name = &vk.spec.secret_ref.name;
    if ctx.stores.served.as_ref().is_some_and(|s| !s.contains(&ns)) {
        // Not a namespace this operator serves: it has no Role there to create Secrets.
        return Ok(());
    }
    let exists = ctx.stores.secrets.get(&ns, name).is_some();
    if exists || vk.meta().deletion_timestamp.is_some() {
        return Ok(());
    }
    let key = generate_key().map_err(|e| Error::Random(e.to_string()))?;
    let Some(secret) = key_secret(vk, &key) else {
        return Ok(());
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            ctx.metrics.keys_generated.inc();
            tracing::info!(namespace = %ns, virtual_key = %vk.name_any(), secret = %name, "generated key");
            Ok(())
        }
        // A Secret of that name exists without the watch label: the user brought it, and
        // the compile says how to make it visible.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A fingerprint of the key for `kubectl get`: of its SHA-256, never of the key itself (the
/// Secret a VirtualKey names may hold anything, an AWS secret key included).
fn prefix(vk: &VirtualKey, ctx: &Context) -> Option<String> {
    let secret = ctx.stores.secrets.get(
        &vk.namespace().unwrap_or_default(),
        &vk.spec.secret_ref.name,
    )?;
    let data = secret.data.as_ref()?.get(vk.spec.secret_ref.data_key())?;
    let value = std::str::from_utf8(&data.0).ok()?;
    Some(fingerprint(value.trim()))
}

/// `sha256:` and the first 12 hex digits of the key's SHA-256 (what data planes hold).
pub fn fingerprint(key: &str) -> String {
    format!("sha256:{}", &switchyard_crds::key_hash(key)[..12])
}

/// A VirtualKey's key prefix and spend. `spend` is `None` when Redis has not been read yet:
/// the spend in status is then kept as it is.
pub fn key_extra(
    vk: &VirtualKey,
    prefix: Option<String>,
    spend: Option<&HashMap<String, SpendStatus>>,
) -> Extra {
    let status = vk.status.as_ref();
    let mut extra = serde_json::Map::new();
    let mut same = true;
    if let Some(p) = prefix {
        same &= status.and_then(|s| s.key_prefix.as_deref()) == Some(p.as_str());
        extra.insert("keyPrefix".into(), json!(p));
    }
    let current = status.and_then(|s| s.spend.as_ref());
    let desired = match spend {
        Some(m) => m.get(&spend_id(vk)),
        None => current,
    };
    same &= desired == current;
    if let Some(d) = desired {
        extra.insert("spend".into(), json!(d));
    }
    (serde_json::Value::Object(extra), same)
}

/// How spend is keyed: `namespace/name`.
pub fn spend_id(vk: &VirtualKey) -> String {
    format!("{}/{}", vk.namespace().unwrap_or_default(), vk.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_prefixed() {
        let a = generate_key().expect("rng");
        let b = generate_key().expect("rng");
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), KEY_PREFIX.len() + 43);
        assert_ne!(a, b);
    }

    #[test]
    fn secret_is_owned_by_the_virtual_key() {
        let mut vk = VirtualKey::new(
            "k",
            switchyard_crds::VirtualKeySpec {
                secret_ref: switchyard_crds::KeySecretRef {
                    name: "k-secret".into(),
                    key: None,
                },
                ..Default::default()
            },
        );
        assert!(key_secret(&vk, "x").is_none(), "no uid yet: cannot own");
        vk.metadata.namespace = Some("ns".into());
        vk.metadata.uid = Some("uid-1".into());
        let s = key_secret(&vk, "sk-sy-abc").expect("secret");
        let owner = &s.metadata.owner_references.as_ref().expect("owners")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("VirtualKey", "k", "uid-1")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(s.data.as_ref().expect("data")["key"].0, b"sk-sy-abc");
        let labels = s.metadata.labels.as_ref().expect("labels");
        assert_eq!(
            labels
                .get(switchyard_crds::SECRET_LABEL)
                .map(String::as_str),
            Some("true"),
            "the operator only watches labelled Secrets: its own must carry the label"
        );
    }

    use std::collections::HashMap;

    #[test]
    fn the_fingerprint_shows_nothing_of_the_key() {
        let secret = "AKIAIOSFODNN7EXAMPLE";
        let f = fingerprint(secret);
        assert!(f.starts_with("sha256:") && f.len() == 19, "{f}");
        assert!(!f.contains("AKIA"));
        assert_eq!(f[7..], switchyard_crds::key_hash(secret)[..12]);
    }

    #[test]
    fn key_status_carries_prefix_and_spend_and_keeps_spend_when_redis_is_away() {
        let mut vk = VirtualKey::new("k", switchyard_crds::VirtualKeySpec::default());
        vk.metadata.namespace = Some("ns".into());
        let spend = |amount: &str| SpendStatus {
            amount: amount.into(),
            period: "2026-11".into(),
            exceeded: false,
        };
        let read = HashMap::from([("ns/k".to_owned(), spend("1.500000"))]);
        let (patch, same) = key_extra(&vk, Some("sk-sy-abc…".into()), Some(&read));
        assert!(!same, "nothing in status yet");
        assert_eq!(patch["keyPrefix"], "sk-sy-abc…");
        assert_eq!(patch["spend"]["amount"], "1.500000");
        vk.status = Some(switchyard_crds::VirtualKeyStatus {
            key_prefix: Some("sk-sy-abc…".into()),
            spend: Some(spend("1.500000")),
            ..Default::default()
        });
        assert!(key_extra(&vk, Some("sk-sy-abc…".into()), Some(&read)).1);
        // Redis unreadable: the spend already in status is applied again, unchanged.
        let (patch, same) = key_extra(&vk, Some("sk-sy-abc…".into()), None);
        assert!(same);
        assert_eq!(patch["spend"]["amount"], "1.500000");
        // More spend: a write.
        let more = HashMap::from([("ns/k".to_owned(), spend("2.000000"))]);
        assert!(!key_extra(&vk, Some("sk-sy-abc…".into()), Some(&more)).1);
        // Budget removed: the spend leaves status.
        let (patch, same) = key_extra(&vk, Some("sk-sy-abc…".into()), Some(&HashMap::new()));
        assert!(!same);
        assert!(patch.get("spend").is_none());
    }
}
