//! Capstan's service proxy: watches Services and EndpointSlices through the API and programs
//! each service's virtual addresses into the kernel, so that connections to a ClusterIP or a
//! node port reach one of its ready endpoints.
//!
//! [`model`] is the pure core (objects in, virtual services out); [`dataplane`] is the seam to
//! the kernel, implemented by [`nft`] (an nftables table of our own) and [`ipvs`] (IPVS virtual
//! servers over generic netlink); [`firewall`] opens Docker's FORWARD policy for the pod range;
//! [`dns`] answers the cluster's names; [`sync`] is the loop that keeps the kernel in line.

pub mod dataplane;
pub mod dns;
pub mod firewall;
pub mod ipvs;
pub mod model;
pub mod nft;
pub mod sync;

use capstan_api::cidr::Cidr;
use std::net::SocketAddrV4;
use std::time::Duration;

pub use nft::Spread;
pub use sync::Proxy;

/// Which kernel dataplane programs the services.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyMode {
    /// IPVS when the kernel has it, nftables otherwise.
    #[default]
    Auto,
    Nftables,
    Ipvs,
}

impl std::str::FromStr for ProxyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<ProxyMode, String> {
        match s {
            "auto" => Ok(ProxyMode::Auto),
            "nftables" => Ok(ProxyMode::Nftables),
            "ipvs" => Ok(ProxyMode::Ipvs),
            other => Err(format!("unknown proxy mode {other:?}: expected ipvs, nftables or auto")),
        }
    }
}

/// The proxy's settings.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub mode: ProxyMode,
    /// The nftables table the proxy owns (family `ip`).
    pub table: String,
    pub service_cidr: Cidr,
    pub pod_cidr: Cidr,
    pub spread: Spread,
    /// Run `nft` and `iptables` inside this network namespace (tests); `None`: the host's.
    pub netns: Option<String>,
    /// Changes closer together than this are applied together.
    pub min_sync_interval: Duration,
    /// How often the whole table is rewritten, repairing changes made by anyone else.
    pub resync_interval: Duration,
    /// Where this host's cluster DNS listens; the `kube-dns` ClusterIP is pointed here. `None`:
    /// no DNS server.
    pub dns: Option<SocketAddrV4>,
    pub cluster_domain: String,
    /// Where the cluster DNS sends names outside the cluster; default: the first nameserver of
    /// the host's /etc/resolv.conf. `None`: they are refused.
    pub dns_upstream: Option<std::net::SocketAddr>,
    /// The IPVS scheduler for every virtual service: rr, wrr, lc, sh or mh.
    pub ipvs_scheduler: String,
    /// The node this proxy runs on: its endpoints are the local ones of the Local traffic
    /// policies. `None`: every policy acts as Cluster.
    pub node_name: Option<String>,
}

impl Default for ProxyConfig {
    fn default() -> ProxyConfig {
        ProxyConfig {
            mode: ProxyMode::Auto,
            table: "capstan-proxy".into(),
            service_cidr: capstan_api::cidr::SERVICE_RANGE,
            pod_cidr: capstan_api::cidr::POD_RANGE,
            spread: Spread::Random,
            netns: None,
            min_sync_interval: Duration::from_millis(100),
            resync_interval: Duration::from_secs(30),
            dns: None,
            cluster_domain: "cluster.local".into(),
            dns_upstream: std::fs::read_to_string("/etc/resolv.conf")
                .ok()
                .and_then(|text| dns::resolv_conf_upstream(&text)),
            ipvs_scheduler: "rr".into(),
            node_name: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("running {program}: {source} (is the nftables package installed?)")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cluster DNS on {addr}: {source}")]
    Dns {
        addr: SocketAddrV4,
        #[source]
        source: std::io::Error,
    },
    #[error("nft refused the update: {stderr}")]
    Nft { stderr: String },
    #[error("nf_tables refused {what}: {reason}")]
    NfTables { what: String, reason: String },
    #[error("nf_tables netlink socket: {0}")]
    NfTablesSocket(#[source] std::io::Error),
    #[error("iptables {args}: {stderr}")]
    Iptables { args: String, stderr: String },
    #[error(
        "--proxy-mode ipvs: this kernel has no IPVS (no /proc/net/ip_vs, and `modprobe ip_vs` did not help); use --proxy-mode nftables"
    )]
    NoIpvs,
    #[error("IPVS: {0}")]
    Ipvs(#[from] ipvs::KernelError),
    #[error("the IPVS backend programs the proxy's own network namespace; it cannot be combined with a netns setting")]
    IpvsNetns,
}

/// Whether the kernel (of the current network namespace) has the IPVS family.
/// Loads the module once if it is not loaded yet (quietly: most kernels here have none).
pub fn kernel_has_ipvs() -> bool {
    let present = || std::path::Path::new("/proc/net/ip_vs").exists();
    if present() {
        return true;
    }
    let _ = std::process::Command::new("modprobe")
        .arg("-q")
        .arg("ip_vs")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    present()
}
