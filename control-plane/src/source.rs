//! Where resources come from. Every source produces whole `World`s; the compile loop turns
//! each into a snapshot. `dir:PATH` is here; `kubernetes` (`kube/`) and `etcd:URL`
//! (`etcd.rs`) plug in the same way.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use switchyard_crds::World;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("unknown source {0:?}: use `kubernetes`, `dir:PATH` or `etcd:URL[,URL...]`")]
    Unknown(String),
    #[error("source `{0}` is not available in this build yet")]
    Unavailable(&'static str),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A producer of resource sets.
pub trait Source: Send + 'static {
    /// Human-readable description for logs.
    fn describe(&self) -> String;
    /// Runs forever, publishing a new World whenever the resources change.
    fn run(
        self,
        tx: watch::Sender<Option<Arc<World>>>,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;
}

/// The `--source` flag, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    Kubernetes,
    Dir(PathBuf),
    /// etcd endpoints (`http://host:2379`; a bare `host:port` gets `http://`).
    Etcd(Vec<String>),
}

impl std::str::FromStr for SourceSpec {
    type Err = SourceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kubernetes" => Ok(Self::Kubernetes),
            _ => {
                if let Some(p) = s.strip_prefix("dir:").filter(|p| !p.is_empty()) {
                    return Ok(Self::Dir(PathBuf::from(p)));
                }
                let urls: Vec<String> = s
                    .strip_prefix("etcd:")
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(|u| {
                        if u.contains("://") {
                            u.to_owned()
                        } else {
                            format!("http://{u}")
                        }
                    })
                    .collect();
                if s.starts_with("etcd:") && !urls.is_empty() {
                    Ok(Self::Etcd(urls))
                } else {
                    Err(SourceError::Unknown(s.to_owned()))
                }
            }
        }
    }
}

/// `dir:PATH`: YAML files in a directory, polled for changes.
#[derive(Debug)]
pub struct DirSource {
    pub dir: PathBuf,
    pub poll: Duration,
}

impl Source for DirSource {
    fn describe(&self) -> String {
        format!("dir:{}", self.dir.display())
    }

    async fn run(self, tx: watch::Sender<Option<Arc<World>>>) -> Result<(), SourceError> {
        let io = |source| SourceError::Io {
            path: self.dir.display().to_string(),
            source,
        };
        // The first load must succeed: a control plane without its input is misconfigured.
        let mut cache = switchyard_crds::fs::DirCache::default();
        let mut last = switchyard_crds::fs::fingerprint(&self.dir).map_err(io)?;
        let world = cache.load(&self.dir).map_err(io)?;
        tx.send_replace(Some(Arc::new(world)));
        loop {
            tokio::time::sleep(self.poll).await;
            match switchyard_crds::fs::fingerprint(&self.dir) {
                Ok(fp) if fp == last => {}
                Ok(fp) => match tokio::task::block_in_place(|| cache.load(&self.dir)) {
                    Ok(world) => {
                        last = fp;
                        tracing::info!(dir = %self.dir.display(), "resources changed");
                        tx.send_replace(Some(Arc::new(world)));
                    }
                    Err(e) => {
                        tracing::warn!(dir = %self.dir.display(), error = %e, "reading resources failed; keeping the last set")
                    }
                },
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "resource directory unreadable; keeping the last set")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_source_flags() {
        assert_eq!(
            "kubernetes".parse::<SourceSpec>().ok(),
            Some(SourceSpec::Kubernetes)
        );
        assert_eq!(
            "dir:/etc/sy".parse::<SourceSpec>().ok(),
            Some(SourceSpec::Dir("/etc/sy".into()))
        );
        assert!("dir:".parse::<SourceSpec>().is_err());
        assert!("etcd".parse::<SourceSpec>().is_err());
        assert!("etcd:".parse::<SourceSpec>().is_err());
        assert_eq!(
            "etcd:127.0.0.1:2379, https://e2:2379"
                .parse::<SourceSpec>()
                .ok(),
            Some(SourceSpec::Etcd(vec![
                "http://127.0.0.1:2379".into(),
                "https://e2:2379".into()
            ]))
        );
    }
}
