//! `capstan user add NAME` and `capstan user revoke NAME`: people's credentials. A client
//! certificate from the cluster CA (CN = the user, O = the groups) is written into a kubeconfig
//! on the control-plane machine; what it may do is what RBAC bindings in Git grant the name and
//! groups. Revoking refuses every certificate of the user issued until then.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Issue a client certificate for a person and write a kubeconfig that uses it.
    Add(AddArgs),
    /// Refuse every certificate of the user issued until now.
    Revoke {
        name: String,
        /// An administrator's kubeconfig; default: ~/.capstan/kubeconfig.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// The user name (the certificate's common name).
    pub name: String,
    /// A group the user belongs to (the certificate's organisation); at most two.
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// The daemon's data directory (its CA signs the certificate); default: ~/.capstan.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// How long the certificate is valid (`24h`, `90m`, `30s`): short, so that a lost one
    /// stops working soon.
    #[arg(long, default_value = "24h")]
    pub valid_for: String,
    /// Where to write the kubeconfig; default: DATA_DIR/users/NAME.kubeconfig.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Add(args) => add(args),
        Command::Revoke { name, kubeconfig } => revoke(&name, kubeconfig),
    }
}

/// Names Capstan gives its own identities; a certificate naming them is refused.
fn reserved(name: &str) -> bool {
    name.starts_with("system:") || name.starts_with("capstan:")
}

fn add(args: AddArgs) -> anyhow::Result<ExitCode> {
    if args.name.is_empty() || reserved(&args.name) {
        bail!(
            "{:?} is not a user name people may have: system: and capstan: names are reserved",
            args.name
        );
    }
    if let Some(g) = args.groups.iter().find(|g| g.starts_with("system:")) {
        bail!("{g:?}: system: groups are given by Capstan, not by certificates");
    }
    let data = match args.data_dir {
        Some(d) => d,
        None => super::daemon::default_data_dir()?,
    };
    let pki = data.join("pki");
    if !pki.join("ca.crt").exists() {
        bail!(
            "{}: no cluster CA here; run this on the control-plane machine, or pass --data-dir",
            pki.display()
        );
    }
    let ca = capstan_daemon::pki::Ca::load_or_create(&pki)?;
    let admin = data.join("kubeconfig");
    let file = kube::config::Kubeconfig::read_from(&admin)
        .with_context(|| format!("reading the API server's address from {}", admin.display()))?;
    let server = file
        .clusters
        .iter()
        .find_map(|c| c.cluster.as_ref()?.server.clone())
        .with_context(|| format!("{}: no server", admin.display()))?;
    let valid: jiff::SignedDuration = args
        .valid_for
        .parse()
        .with_context(|| format!("--valid-for {:?}: expected a duration such as 24h, 90m or 30s", args.valid_for))?;
    if valid.as_secs() < 1 {
        bail!(
            "--valid-for {:?}: a certificate must be valid for at least a second",
            args.valid_for
        );
    }
    let cert = ca.issue_user(&args.name, &args.groups, valid.as_secs())?;
    let out = args
        .out
        .unwrap_or_else(|| data.join("users").join(format!("{}.kubeconfig", args.name)));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    capstan_daemon::kubeconfig::write_certificate(&out, &server, &ca.cert_pem, &args.name, &cert.cert_pem, &cert.key_pem)?;
    println!(
        "user {} (groups: {}) valid for {}: {}",
        args.name,
        if args.groups.is_empty() {
            "none".to_owned()
        } else {
            args.groups.join(", ")
        },
        args.valid_for,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn revoke(name: &str, kubeconfig: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let client = super::admin_client(kubeconfig).await?;
        let request = http::Request::post(format!("/capstan/v1/users/{name}/revoke"))
            .body(Vec::new())
            .context("building the request")?;
        client
            .request::<serde_json::Value>(request)
            .await
            .with_context(|| format!("revoking user {name}"))?;
        println!("user {name}: certificates issued until now are refused");
        Ok(ExitCode::SUCCESS)
    })
}
