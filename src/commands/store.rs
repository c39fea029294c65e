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
    #[arg(long, default_value_t = capstan_daemon::DEFAULT_LEADER_LEASE.as_secs())]
    pub leader_elect_lease_duration: u64,
    /// Milliseconds between the leader's renewals of its lease.
    #[arg(long, default_value_t = capstan_daemon::DEFAULT_LEADER_RENEW.as_millis() as u64)]
    pub leader_elect_renew_interval: u64,
    /// Seconds of history kept for watches that resume (kube-apiserver's
    /// --etcd-compaction-interval): older revisions are compacted away, on either store.
    #[arg(long, default_value_t = capstan_daemon::leader::HistoryWindow::default().window.as_secs())]
    pub compaction_interval: u64,
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

    /// The history kept for watches.
    pub fn history(&self) -> anyhow::Result<capstan_daemon::leader::HistoryWindow> {
        anyhow::ensure!(self.compaction_interval >= 1, "--compaction-interval 0: at least 1 second");
        Ok(capstan_daemon::leader::HistoryWindow {
            window: std::time::Duration::from_secs(self.compaction_interval),
            ..Default::default()
        })
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

/// `capstan store …`
#[derive(clap::Subcommand)]
pub enum Command {
    /// Copy a stopped cluster's objects from its embedded store (DATA_DIR/store.redb) to etcd,
    /// then start its daemon with the same --data-dir and --store etcd://…; or, with `--to redb`,
    /// back from etcd (every replica stopped) into DATA_DIR/store.redb of a replica's data
    /// directory. Secrets stay sealed with the keys in DATA_DIR. Resource versions start anew:
    /// clients re-list.
    Migrate {
        /// The stopped daemon's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Which way: `etcd` (from DATA_DIR/store.redb to the etcd --store names) or `redb`
        /// (from that etcd to DATA_DIR/store.redb).
        #[arg(long, default_value = "etcd", value_parser = ["etcd", "redb"])]
        to: String,
        /// The etcd (`etcd://HOST:PORT[,…]`), with its prefix and TLS flags.
        #[command(flatten)]
        etcd: StoreArgs,
    },
}

pub fn run(command: Command) -> anyhow::Result<std::process::ExitCode> {
    match command {
        Command::Migrate { data_dir, to, etcd } if to == "redb" => migrate_back(&data_dir, &etcd),
        Command::Migrate { data_dir, etcd, .. } => migrate(&data_dir, &etcd),
    }
}

/// Keys per etcd transaction (etcd's default limit is 128 operations).
const BATCH: usize = 100;

#[cfg(feature = "etcd")]
fn migrate(data_dir: &std::path::Path, to: &StoreArgs) -> anyhow::Result<std::process::ExitCode> {
    use capstan_store::{Store, Txn};
    let StoreChoice::Etcd(config) = to.choice()? else {
        anyhow::bail!("--store: name the etcd to migrate to (etcd://HOST:PORT[,…])");
    };
    let path = data_dir.join("store.redb");
    anyhow::ensure!(path.exists(), "{} holds no embedded store", path.display());
    // redb locks its file: a running daemon makes this fail, rather than copy a moving store.
    let from = capstan_store::RedbStore::open(&path).with_context(|| format!("opening {} (stop its daemon first)", path.display()))?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let prefix = config.prefix.clone();
        let to = capstan_store::EtcdStore::open(config).await?;
        let there = to.range("/", None, 1)?;
        anyhow::ensure!(
            there.kvs.is_empty(),
            "etcd already holds a cluster under {prefix}: choose another --etcd-prefix, or remove it there first"
        );
        let all = from.range("/", None, 0)?;
        for chunk in all.kvs.chunks(BATCH) {
            let txn = chunk
                .iter()
                .fold(Txn::default(), |txn, kv| txn.put(kv.key.clone(), kv.value.clone()));
            to.txn(txn).await?;
        }
        let copied = to.range("/", None, 0)?;
        let same = copied.kvs.len() == all.kvs.len() && copied.kvs.iter().zip(&all.kvs).all(|(a, b)| a.key == b.key && a.value == b.value);
        anyhow::ensure!(same, "the copy in etcd differs from the embedded store: not using it");
        eprintln!(
            "copied {} keys from {} to etcd://{} under {prefix}; start the daemon with --data-dir {} --store {}",
            all.kvs.len(),
            path.display(),
            to.config().describe(),
            data_dir.display(),
            to_url(to.config()),
        );
        Ok(std::process::ExitCode::SUCCESS)
    })
}

/// Copies a stopped cluster from etcd into DATA_DIR/store.redb (which must hold nothing yet).
#[cfg(feature = "etcd")]
fn migrate_back(data_dir: &std::path::Path, from: &StoreArgs) -> anyhow::Result<std::process::ExitCode> {
    use capstan_store::{Store, Txn};
    let StoreChoice::Etcd(config) = from.choice()? else {
        anyhow::bail!("--store: name the etcd to migrate from (etcd://HOST:PORT[,…])");
    };
    anyhow::ensure!(
        data_dir.join("pki").is_dir(),
        "{} is not a replica's data directory: its pki/ holds the keys the cluster's Secrets are sealed with",
        data_dir.display()
    );
    let path = data_dir.join("store.redb");
    let to = capstan_store::RedbStore::open(&path).with_context(|| format!("opening {}", path.display()))?;
    anyhow::ensure!(
        to.range("/", None, 1)?.kvs.is_empty(),
        "{} already holds a cluster: move it away first",
        path.display()
    );
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let prefix = config.prefix.clone();
        let from = capstan_store::EtcdStore::open(config).await?;
        // A replica that still runs would keep writing to etcd after the copy.
        if let Some(leader) = from.get(capstan_store::LEADER_KEY)? {
            anyhow::bail!(
                "a replica still leads ({}): stop every replica first (a killed one's lease runs out within seconds)",
                String::from_utf8_lossy(&leader.value)
            );
        }
        let all = from.range("/", None, 0)?;
        anyhow::ensure!(!all.kvs.is_empty(), "etcd holds no cluster under {prefix}");
        // The replicas' bookkeeping in etcd is no part of a cluster on one machine.
        let kept: Vec<_> = all
            .kvs
            .iter()
            .filter(|kv| !kv.key.starts_with(capstan_store::REPLICAS_PREFIX))
            .collect();
        for chunk in kept.chunks(BATCH) {
            let txn = chunk
                .iter()
                .fold(Txn::default(), |txn, kv| txn.put(kv.key.clone(), kv.value.clone()));
            to.txn(txn).await?;
        }
        let copied = to.range("/", None, 0)?;
        let same = copied.kvs.len() == kept.len() && copied.kvs.iter().zip(&kept).all(|(a, b)| a.key == b.key && a.value == b.value);
        anyhow::ensure!(same, "the copy in {} differs from etcd: not using it", path.display());
        eprintln!(
            "copied {} keys from etcd://{} under {prefix} to {}; start the daemon with --data-dir {} (the embedded store)",
            kept.len(),
            from.config().describe(),
            path.display(),
            data_dir.display(),
        );
        Ok(std::process::ExitCode::SUCCESS)
    })
}

#[cfg(not(feature = "etcd"))]
fn migrate_back(_: &std::path::Path, from: &StoreArgs) -> anyhow::Result<std::process::ExitCode> {
    from.choice().map(|_| std::process::ExitCode::FAILURE)
}

#[cfg(feature = "etcd")]
fn to_url(config: &capstan_store::EtcdConfig) -> String {
    format!("etcd://{}", config.describe())
}

#[cfg(not(feature = "etcd"))]
fn migrate(_: &std::path::Path, to: &StoreArgs) -> anyhow::Result<std::process::ExitCode> {
    to.choice().map(|_| std::process::ExitCode::FAILURE)
}
