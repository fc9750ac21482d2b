//! A real etcd on loopback (the binary `tests/kube-env/build.sh` builds for the Kubernetes
//! suite), for the `etcd:` source and the API server alike.

use std::path::Path;

use crate::procs::{Proc, free_port};

/// A running etcd. Dropping it stops the process.
#[derive(Debug)]
pub struct EtcdServer {
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl EtcdServer {
    /// Starts etcd from `bin` with its data under `dir/etcd`.
    pub fn start(bin: &Path, dir: &Path) -> Self {
        let data = dir.join("etcd");
        std::fs::create_dir_all(&data).unwrap_or_else(|e| panic!("etcd dir: {e}"));
        let (client_port, peer_port) = (free_port(), free_port());
        let proc = Proc::start_path(
            &bin.join("etcd"),
            &[
                "--name=e2e".into(),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls=http://127.0.0.1:{client_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-cluster=e2e=http://127.0.0.1:{peer_port}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
            dir,
        );
        Self {
            proc,
            url: format!("http://127.0.0.1:{client_port}"),
        }
    }

    pub fn running(&mut self) -> bool {
        self.proc.running()
    }
}
