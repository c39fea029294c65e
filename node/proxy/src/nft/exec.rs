//! Execution, the thin edge: runs `nft` (inside a network namespace when asked) for the
//! scripts and sends the element changes as one netlink transaction.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::render::Update;
use super::{elements, netlink};
use crate::ProxyError;

/// Runs `nft` (inside `netns` when set: tests use namespaces of their own).
#[derive(Clone, Debug)]
pub struct Nft {
    pub netns: Option<String>,
    pub table: String,
    /// The netlink socket for element transactions, shared by clones.
    channel: Arc<Mutex<netlink::Channel>>,
}

impl Nft {
    pub fn new(netns: Option<String>, table: impl Into<String>) -> Nft {
        Nft {
            netns,
            table: table.into(),
            channel: Arc::default(),
        }
    }

    fn command(&self) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "nft"]);
                c
            }
            None => Command::new("nft"),
        };
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    async fn run(&self, args: &[&str], input: Option<&str>) -> Result<String, ProxyError> {
        let mut cmd = self.command();
        cmd.args(args);
        let mut child = cmd.spawn().map_err(|source| ProxyError::Spawn { program: "nft", source })?;
        let mut stdin = child.stdin.take().expect("piped");
        if let Some(text) = input {
            stdin
                .write_all(text.as_bytes())
                .await
                .map_err(|source| ProxyError::Spawn { program: "nft", source })?;
        }
        drop(stdin);
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| ProxyError::Spawn { program: "nft", source })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(ProxyError::Nft {
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// Applies one script as a single transaction.
    pub async fn apply(&self, script: &str) -> Result<(), ProxyError> {
        if script.is_empty() {
            return Ok(());
        }
        self.run(&["-f", "-"], Some(script)).await.map(drop)
    }

    /// Applies an [`Update`]: its three steps in order, each a transaction of its own.
    pub async fn apply_update(&self, update: &Update) -> Result<(), ProxyError> {
        self.apply(&update.pre).await?;
        if let Some(batch) = elements::encode(&self.table, &update.elements, 1) {
            let (netns, channel) = (self.netns.clone(), self.channel.clone());
            tokio::task::spawn_blocking(move || {
                let mut channel = channel.lock().unwrap_or_else(|e| e.into_inner());
                netlink::apply(&mut channel, netns.as_deref(), &batch)
            })
            .await
            .expect("nf_tables transaction thread")?;
        }
        self.apply(&update.post).await
    }

    /// The table as the kernel holds it (`nft -t list table`: the elements of maps and sets left
    /// out, there may be hundreds of thousands); empty when it does not exist.
    pub async fn list(&self) -> Result<String, ProxyError> {
        match self.run(&["-t", "list", "table", "ip", &self.table], None).await {
            Ok(text) => Ok(text),
            Err(ProxyError::Nft { stderr }) if stderr.contains("No such file or directory") => Ok(String::new()),
            Err(e) => Err(e),
        }
    }

    /// Removes our table, and with it every rule the proxy made.
    pub async fn delete_table(&self) -> Result<(), ProxyError> {
        let t = &self.table;
        self.apply(&format!("add table ip {t}\ndelete table ip {t}\n")).await
    }
}
