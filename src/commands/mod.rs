//! One module per subcommand.

pub mod daemon;
pub mod down;
pub mod drain;
pub mod history;
pub mod node;
pub mod plan;
pub mod schemas;
pub mod status;
pub mod store;
pub mod up;
pub mod user;
pub mod validate;

/// A client of the API server with an administrator's kubeconfig (default: the one the daemon
/// wrote, ~/.capstan/kubeconfig).
pub async fn admin_client(kubeconfig: Option<std::path::PathBuf>) -> anyhow::Result<kube::Client> {
    use anyhow::Context;
    let path = match kubeconfig {
        Some(p) => p,
        None => daemon::default_data_dir()?.join("kubeconfig"),
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let file = kube::config::Kubeconfig::read_from(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default()).await?;
    // A refusal (429: a disruption budget) is the command's to report and retry, not the
    // client's to hide.
    config.default_retry = false;
    Ok(kube::Client::try_from(config)?)
}
