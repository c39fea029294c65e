//! Real etcd members on loopback, started from the `etcd` binary (Debian's etcd-server), for
//! the tests, the benchmarks and a quick local try of `--store etcd://…`. Each member has its
//! own data directory under the directory given, its own client and peer ports, and its log
//! beside its data; members can be killed and started again to prove fault handling.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One member's ports and process.
#[derive(Debug)]
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A running etcd cluster of one or more members. Dropping it kills every member.
#[derive(Debug)]
pub struct LocalEtcd {
    dir: PathBuf,
    token: String,
    members: Vec<Member>,
    tls: Option<ServerTls>,
}

/// TLS on the members' client port (PEM files): their certificate (valid for 127.0.0.1) and
/// key, and the CA whose client certificates they require.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalEtcdError {
    #[error("etcd is not installed (scripts/install-deps.sh installs Debian's etcd-server): {0}")]
    Missing(std::io::Error),
    #[error("starting etcd member {name}: {source}")]
    Spawn { name: String, source: std::io::Error },
    #[error("etcd member {name} exited ({status}); its log: {log}")]
    Exited { name: String, status: String, log: String },
    #[error("etcd at {endpoints} did not become healthy within {secs} s (logs in {dir})")]
    NotHealthy { endpoints: String, secs: u64, dir: String },
}

/// A free port on loopback, below the kernel's ephemeral range (32768 and up by default), so
/// that no connection's source port takes it between this check and etcd's bind.
fn free_port() -> std::io::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..200 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalEtcd {
    /// Starts `members` members with data under `dir` and waits until the cluster answers.
    pub async fn start(dir: &Path, members: usize) -> Result<LocalEtcd, LocalEtcdError> {
        LocalEtcd::start_with(dir, members, None).await
    }

    /// As `start`, with TLS and client certificates on the client port when `tls` says so.
    pub async fn start_with(dir: &Path, members: usize, tls: Option<ServerTls>) -> Result<LocalEtcd, LocalEtcdError> {
        Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .map_err(LocalEtcdError::Missing)?;
        // A member that cannot bind its port (taken between the check and etcd's bind) exits:
        // the cluster starts again on other ports, in a fresh directory.
        let mut attempt = 0;
        loop {
            let home = if attempt == 0 {
                dir.to_owned()
            } else {
                dir.join(format!("retry-{attempt}"))
            };
            let mut list = Vec::new();
            for i in 0..members.max(1) {
                let name = format!("m{i}");
                let port = || {
                    free_port().map_err(|source| LocalEtcdError::Spawn {
                        name: name.clone(),
                        source,
                    })
                };
                list.push(Member {
                    client: port()?,
                    peer: port()?,
                    name,
                    child: None,
                });
            }
            let token = format!("capstan-{}-{}", std::process::id(), list[0].client);
            let mut etcd = LocalEtcd {
                dir: home,
                token,
                members: list,
                tls: tls.clone(),
            };
            for i in 0..etcd.members.len() {
                etcd.spawn(i, "new")?;
            }
            match etcd.wait_healthy(Duration::from_secs(30)).await {
                Ok(()) => return Ok(etcd),
                Err(LocalEtcdError::Exited { .. }) if attempt < 3 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, state: &str) -> Result<(), LocalEtcdError> {
        let cluster = self.initial_cluster();
        let m = &self.members[i];
        let data = self.dir.join(&m.name);
        let spawn_err = |source| LocalEtcdError::Spawn {
            name: m.name.clone(),
            source,
        };
        std::fs::create_dir_all(&data).map_err(spawn_err)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))
            .map_err(spawn_err)?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.client_ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(data.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster, "--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .args(["--log-level", "warn", "--logger", "zap"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(spawn_err)?)
            .stderr(log)
            .spawn()
            .map_err(spawn_err)?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Waits until every running member reports itself healthy.
    async fn wait_healthy(&mut self, within: Duration) -> Result<(), LocalEtcdError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            for m in &mut self.members {
                if let Some(child) = &mut m.child
                    && let Ok(Some(status)) = child.try_wait()
                {
                    m.child = None;
                    return Err(LocalEtcdError::Exited {
                        name: m.name.clone(),
                        status: status.to_string(),
                        log: self.dir.join(format!("{}.log", m.name)).display().to_string(),
                    });
                }
            }
            let mut all = true;
            for m in self.members.iter().filter(|m| m.child.is_some()) {
                all &= match &self.tls {
                    None => health(m.client).await,
                    Some(tls) => tls_health(m.client, tls),
                };
            }
            if all {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(LocalEtcdError::NotHealthy {
                    endpoints: self.endpoints().join(","),
                    secs: within.as_secs(),
                    dir: self.dir.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `127.0.0.1:port` of every member, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("127.0.0.1:{}", m.client)).collect()
    }

    /// The `--store` value that names this cluster.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data and waits until it is healthy.
    pub async fn restart(&mut self, i: usize) -> Result<(), LocalEtcdError> {
        self.kill(i);
        self.spawn(i, "existing")?;
        self.wait_healthy(Duration::from_secs(30)).await
    }
}

/// Whether the member at `port` answers `/health` with `"health":"true"`.
async fn health(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(body.contains("\"health\":\"true\""))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The same over TLS, asked with etcdctl (the member's certificate as the client's).
fn tls_health(port: u16, tls: &ServerTls) -> bool {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(format!("https://127.0.0.1:{port}"))
        .arg("--cacert")
        .arg(&tls.client_ca)
        .arg("--cert")
        .arg(&tls.cert)
        .arg("--key")
        .arg(&tls.key)
        .args(["--command-timeout", "2s", "endpoint", "health"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
