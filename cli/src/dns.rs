//! The DNS add-on's settings, shared by `skiff node` and `skiff up` (where it runs
//! node-local beside the agent), and `skiff dns` (the add-on on its own).

use anyhow::{bail, Context as _, Result};
use clap::Args;
use skiff_api::cidr::Ipv4Cidr;
use skiff_api::resolv::ResolvConf;
use skiff_dns_addon::run::DnsConfig;
use skiff_dns_addon::zone::ZoneConfig;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

/// The cluster DNS address's offset in the service range (k3s's `10.43.0.10`).
const CLUSTER_DNS_OFFSET: u64 = 10;

/// How the cluster's names are served.
#[derive(Debug, Clone, Args)]
pub struct DnsArgs {
    /// The address the node-local DNS add-on answers on, the `kube-dns` Service's
    /// cluster IP (default: the tenth address of the service range).
    #[arg(long)]
    cluster_dns: Option<Ipv4Addr>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// More ADDRESS:PORT to answer DNS on (UDP and TCP), e.g. the node's address.
    #[arg(long = "dns-listen")]
    dns_listen: Vec<SocketAddr>,
    /// The resolver file naming the upstream resolvers for names outside the cluster.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Run no DNS add-on on this node.
    #[arg(long)]
    disable_dns: bool,
}

fn zone_config(domain: &str) -> Result<ZoneConfig> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if let Some(e) = skiff_api::validation::dns1123_subdomain_errors(&domain) {
        bail!("invalid --cluster-domain {domain:?}: {e}");
    }
    Ok(ZoneConfig {
        domain,
        ..ZoneConfig::default()
    })
}

/// The resolver file, read once; a missing one leaves names outside the cluster
/// unresolved (said on stderr).
fn read_resolv_conf(path: &PathBuf) -> ResolvConf {
    match std::fs::read_to_string(path) {
        Ok(text) => ResolvConf::parse(&text),
        Err(e) => {
            eprintln!(
                "skiff: cannot read {}: {e}; names outside the cluster will not resolve",
                path.display()
            );
            ResolvConf::default()
        }
    }
}

/// The upstream resolvers of `conf`, leaving out the addresses skiff answers on.
fn upstreams(conf: &ResolvConf, own: &[SocketAddr]) -> Vec<SocketAddr> {
    conf.nameservers
        .iter()
        .filter(|ip| !own.iter().any(|a| a.ip() == **ip))
        .map(|ip| SocketAddr::new(*ip, 53))
        .collect()
}

/// What a node needs of the DNS settings: the add-on's configuration (`None` when
/// disabled), the cluster DNS pods are given, and the node's resolv.conf.
pub struct NodeDns {
    pub addon: Option<DnsConfig>,
    pub cluster: Option<skiff_node::dns::ClusterDns>,
    pub host: ResolvConf,
}

impl DnsArgs {
    /// The cluster DNS address for `service_cidr`.
    pub fn cluster_dns(&self, service_cidr: Ipv4Cidr) -> Result<Ipv4Addr> {
        match self.cluster_dns {
            Some(ip) => Ok(ip),
            None => service_cidr
                .address(CLUSTER_DNS_OFFSET)
                .with_context(|| format!("the service range {service_cidr} has no tenth address")),
        }
    }

    /// The node's DNS settings for `service_cidr`, reading the resolver file once.
    pub fn node(&self, service_cidr: Ipv4Cidr) -> Result<NodeDns> {
        let host = read_resolv_conf(&self.resolv_conf);
        if self.disable_dns {
            return Ok(NodeDns {
                addon: None,
                cluster: None,
                host,
            });
        }
        let cluster_dns = self.cluster_dns(service_cidr)?;
        let zone = zone_config(&self.cluster_domain)?;
        let mut listen = vec![SocketAddr::new(cluster_dns.into(), 53)];
        listen.extend(self.dns_listen.iter().copied());
        let mut addon = DnsConfig::new(listen.clone(), upstreams(&host, &listen));
        addon.zone = zone.clone();
        Ok(NodeDns {
            addon: Some(addon),
            cluster: Some(skiff_node::dns::ClusterDns {
                servers: vec![cluster_dns.into()],
                domain: zone.domain,
            }),
            host,
        })
    }
}

/// `skiff dns`: the add-on alone, answering on the given addresses.
#[derive(Debug, Args)]
pub struct DnsCommandArgs {
    /// The API server URL (default: from the kubeconfig).
    #[arg(long)]
    server: Option<String>,
    /// ADDRESS:PORT to answer on, UDP and TCP (repeatable).
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The resolver file naming the upstream resolvers.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
}

pub async fn run(context: &crate::get::Context, args: DnsCommandArgs) -> Result<ExitCode> {
    let client = match &args.server {
        Some(server) => skiff_client::Client::new(server)?,
        None => context.client()?,
    };
    let mut config = DnsConfig::new(
        args.listen.clone(),
        upstreams(&read_resolv_conf(&args.resolv_conf), &args.listen),
    );
    config.zone = zone_config(&args.cluster_domain)?;
    let zone = skiff_dns_addon::run::shared_zone(&config.zone);
    eprintln!(
        "skiff dns: serving {} on {:?}",
        config.zone.domain, config.listen
    );
    let factory = skiff_client::factory::SharedInformerFactory::new(client);
    skiff_dns_addon::run::run(factory, config, zone, crate::control::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
