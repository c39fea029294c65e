//! Where the control plane keeps the cluster's objects: the `--store` flags `capstan daemon`
//! and `capstan up` share, and `capstan store migrate`, which copies a cluster from the
//! embedded store to etcd.

use std::path::PathBuf;

use anyhow::Context;
use capstan_daemon::StoreChoice;

/// The store flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct StoreArgs {
    /// `redb` (the embedded store in DATA_DIR, the default) or
    /// `etcd://HOST:PORT[,HOST:PORT…]` (an etcd v3 cluster several replicas can share).
    #[arg(long, default_value = "redb")]
    pub store: String,
    /// Every key goes under this prefix in etcd, so clusters may share one etcd.
    #[arg(long, default_value = "/capstan")]
    pub etcd_prefix: String,
    /// The CA that signed the etcd members' certificates (TLS to etcd).
    #[arg(long)]
    pub etcd_cafile: Option<PathBuf>,
    /// A client certificate for etcd (with --etcd-keyfile).
    #[arg(long, requires = "etcd_keyfile")]
    pub etcd_certfile: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, requires = "etcd_certfile")]
    pub etcd_keyfile: Option<PathBuf>,
    /// With several replicas on etcd: seconds a leader that stopped renewing (crashed, cut off)
    /// keeps leading before another takes over (whole seconds, at least 2: etcd's minimum lease).
    #[arg(long, default_value_t = 2)]
    pub leader_elect_lease_duration: u64,
    /// Milliseconds between the leader's renewals of its lease.
    #[arg(long, default_value_t = 500)]
    pub leader_elect_renew_interval: u64,
}

impl StoreArgs {
    /// The leader election's lease and renewal period.
    pub fn election(&self) -> anyhow::Result<(std::time::Duration, std::time::Duration)> {
        let lease = std::time::Duration::from_secs(self.leader_elect_lease_duration);
        let renew = std::time::Duration::from_millis(self.leader_elect_renew_interval);
        anyhow::ensure!(
            lease.as_secs() >= 2,
            "--leader-elect-lease-duration {}: at least 2 seconds (etcd's shortest lease)",
            lease.as_secs()
        );
        anyhow::ensure!(
            !renew.is_zero() && renew * 2 <= lease,
            "--leader-elect-renew-interval {} ms: renew at least twice per lease ({} s)",
            renew.as_millis(),
            lease.as_secs()
        );
        Ok((lease, renew))
    }

    /// The store the flags name.
    pub fn choice(&self) -> anyhow::Result<StoreChoice> {
        if self.store == "redb" {
            anyhow::ensure!(
                self.etcd_cafile.is_none() && self.etcd_certfile.is_none(),
                "--etcd-cafile and --etcd-certfile apply to --store etcd://…"
            );
            return Ok(StoreChoice::Redb);
        }
        self.etcd()
    }

    #[cfg(feature = "etcd")]
    fn etcd(&self) -> anyhow::Result<StoreChoice> {
        let mut config = capstan_store::EtcdConfig::parse(&self.store).map_err(|e| anyhow::anyhow!("--store: {e}"))?;
        anyhow::ensure!(
            self.etcd_prefix.starts_with('/') && !self.etcd_prefix.ends_with('/') && !self.etcd_prefix.contains('\0'),
            "--etcd-prefix {:?}: expected a path such as /capstan (a leading slash, none at the end)",
            self.etcd_prefix
        );
        config.prefix = self.etcd_prefix.clone();
        let read = |flag: &str, p: &PathBuf| std::fs::read(p).with_context(|| format!("{flag} {}", p.display()));
        if let Some(ca) = &self.etcd_cafile {
            let client = match (&self.etcd_certfile, &self.etcd_keyfile) {
                (Some(c), Some(k)) => Some((read("--etcd-certfile", c)?, read("--etcd-keyfile", k)?)),
                _ => None,
            };
            config.tls = Some(capstan_store::EtcdTls {
                ca_pem: read("--etcd-cafile", ca)?,
                client,
            });
        } else {
            anyhow::ensure!(
                self.etcd_certfile.is_none(),
                "--etcd-certfile needs --etcd-cafile (the CA that signed the members' certificates)"
            );
        }
        Ok(StoreChoice::Etcd(config))
    }

    #[cfg(not(feature = "etcd"))]
    fn etcd(&self) -> anyhow::Result<StoreChoice> {
        anyhow::bail!(
            "--store {:?}: this capstan was built without etcd support (the `etcd` cargo feature); use --store redb",
            self.store
        )
    }
}
