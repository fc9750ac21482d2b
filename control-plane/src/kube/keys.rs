//! VirtualKey lifecycle: the leader generates a strong random key into the Secret a
//! VirtualKey names, owned by the VirtualKey (deleting the key deletes the Secret). A Secret
//! that already exists (bring your own key) is used as it is.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use switchyard_crds::VirtualKey;
use tokio::sync::watch;

use super::Stores;

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

/// Runs forever; creates missing key Secrets while leading.
pub async fn run(
    client: kube::Client,
    stores: Stores,
    mut leading: watch::Receiver<bool>,
    interval: Duration,
) {
    loop {
        if *leading.borrow_and_update() {
            for vk in stores.keys.state() {
                let Some(ns) = vk.namespace() else { continue };
                let exists = stores
                    .secrets
                    .get(&ObjectRef::new(&vk.spec.secret_ref.name).within(&ns))
                    .is_some();
                if exists || vk.meta().deletion_timestamp.is_some() {
                    continue;
                }
                let secret = match generate_key().map(|k| key_secret(&vk, &k)) {
                    Ok(Some(s)) => s,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "no randomness for key generation");
                        continue;
                    }
                };
                let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
                match api.create(&PostParams::default(), &secret).await {
                    Ok(_) => {
                        tracing::info!(namespace = %ns, virtual_key = %vk.name_any(), secret = %vk.spec.secret_ref.name, "generated key")
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => {
                        tracing::warn!(error = %e, virtual_key = %vk.name_any(), "creating key Secret failed")
                    }
                }
            }
        }
        tokio::select! {
            _ = stores.changed.notified() => {}
            _ = leading.changed() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
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
    }
}
