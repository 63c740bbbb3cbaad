//! `skiff control`: runs the control plane and writes the kubeconfig its clients use.

use anyhow::{Context as _, Result};
use clap::Args;
use skiff_control::allocator::Ipv4Cidr;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// Directory for the store and the generated kubeconfig.
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to serve the API on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// How many events the watch history keeps before old resourceVersions expire.
    #[arg(long, default_value_t = 65_536)]
    watch_history: usize,
    #[command(flatten)]
    pub controllers: ControllerArgs,
    #[command(flatten)]
    pub network: NetworkArgs,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// How the API server is secured (k3s's `--tls-san`), and the development escape hatch.
#[derive(Debug, Clone, clap::Args)]
pub struct SecurityArgs {
    /// Serve plain HTTP with no authentication or authorization: anyone who reaches the
    /// port is a cluster admin. For development on a trusted machine only.
    #[arg(long)]
    insecure_http: bool,
    /// Extra names or addresses for the API server's certificate (repeatable).
    #[arg(long = "tls-san", value_name = "NAME")]
    tls_san: Vec<String>,
    /// The cluster's DNS domain, for the certificate's `kubernetes.default.svc.<domain>`.
    #[arg(long, default_value = "cluster.local", hide = true)]
    tls_cluster_domain: String,
    /// Read-only requests served at once; more are answered 429 (kube-apiserver's flag).
    #[arg(long, default_value_t = skiff_control::apiserver::limits::DEFAULT_MAX_READ_ONLY)]
    max_requests_inflight: usize,
    /// Mutating requests served at once; more are answered 429.
    #[arg(long, default_value_t = skiff_control::apiserver::limits::DEFAULT_MAX_MUTATING)]
    max_mutating_requests_inflight: usize,
    /// Seconds a request may take (watches, followed logs and port-forwards excepted).
    #[arg(long, default_value_t = 60)]
    request_timeout: u64,
    /// Write an audit log (one audit.k8s.io/v1 Event per request, level Metadata) here.
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
    /// Rotate the audit log at this many megabytes.
    #[arg(long, default_value_t = 100)]
    audit_log_maxsize: u64,
    /// Rotated audit logs kept.
    #[arg(long, default_value_t = 3)]
    audit_log_maxbackup: usize,
}

/// The control plane's security as set up from the flags: what `skiff_control::run`
/// gets, the URL and the kubeconfig clients use.
pub struct Secured {
    pub security: skiff_control::ApiSecurity,
    pub server: String,
    pub kubeconfig: String,
}

impl Secured {
    /// The PKI, unless the cluster runs `--insecure-http`.
    pub fn pki(&self) -> Option<&std::sync::Arc<skiff_control::pki::ClusterPki>> {
        match &self.security {
            skiff_control::ApiSecurity::Tls(pki) => Some(pki),
            skiff_control::ApiSecurity::InsecureHttp => None,
        }
    }

    /// A client of this cluster authenticating as `user` in `groups` (a certificate the
    /// PKI issues), or an unauthenticated one under `--insecure-http`.
    pub fn client_as(&self, user: &str, groups: &[&str]) -> Result<skiff_client::Client> {
        let Some(pki) = self.pki() else {
            return Ok(skiff_client::Client::new(&self.server)?);
        };
        let identity = pki.issue_client(
            user,
            groups,
            skiff_control::pki::LEAF_LIFETIME,
            std::time::SystemTime::now(),
        )?;
        let config = skiff_client::HttpConfig {
            tls: skiff_client::TlsConfig {
                ca_pem: pki.ca_pem().as_bytes().to_vec(),
                identity_pem: Some(identity.identity_pem()),
                insecure_skip_verify: false,
            },
            ..skiff_client::HttpConfig::default()
        };
        Ok(skiff_client::Client::with_config(&self.server, &config)?)
    }
}

impl SecurityArgs {
    /// The audit log the flags ask for, if any.
    pub fn audit(&self) -> Option<skiff_control::audit::AuditConfig> {
        self.audit_log_path
            .clone()
            .map(|path| skiff_control::audit::AuditConfig {
                path,
                max_bytes: self.audit_log_maxsize.max(1).saturating_mul(1 << 20),
                max_backups: self.audit_log_maxbackup,
            })
    }

    /// The request limits the flags ask for.
    pub fn limits(&self) -> skiff_control::apiserver::limits::LimitsConfig {
        skiff_control::apiserver::limits::LimitsConfig {
            max_read_only: self.max_requests_inflight.max(1),
            max_mutating: self.max_mutating_requests_inflight.max(1),
            request_timeout: std::time::Duration::from_secs(self.request_timeout.max(1)),
            ..Default::default()
        }
    }

    /// Loads or makes the cluster PKI under `DATA_DIR/pki` (the serving certificate
    /// names the bound and advertised addresses, the `kubernetes` Service IP and every
    /// `--tls-san`), and an admin kubeconfig for it.
    pub fn secure(
        &self,
        data_dir: &std::path::Path,
        bound: SocketAddr,
        advertise: Option<IpAddr>,
        kubernetes_service_ip: Option<std::net::Ipv4Addr>,
    ) -> Result<Secured> {
        let host = if bound.ip().is_unspecified() {
            SocketAddr::new(IpAddr::from([127, 0, 0, 1]), bound.port())
        } else {
            bound
        };
        if self.insecure_http {
            eprintln!("skiff: WARNING: --insecure-http: the API is plain HTTP and unauthenticated; anyone who reaches {bound} is a cluster admin");
            let server = format!("http://{host}");
            let kubeconfig = skiff_client::kubeconfig::render(&server);
            return Ok(Secured {
                security: skiff_control::ApiSecurity::InsecureHttp,
                server,
                kubeconfig,
            });
        }
        let mut ips = vec![bound.ip()];
        ips.extend(advertise);
        ips.extend(kubernetes_service_ip.map(IpAddr::V4));
        let names = skiff_control::pki::ServingNames::standard(
            &self.tls_cluster_domain,
            &ips,
            &self.tls_san,
        );
        let pki = skiff_control::pki::ClusterPki::ensure(
            &data_dir.join("pki"),
            &names,
            std::time::SystemTime::now(),
        )?;
        let admin = pki.issue_client(
            skiff_control::pki::ADMIN_USER,
            &[skiff_control::pki::MASTERS_GROUP],
            skiff_control::pki::LEAF_LIFETIME,
            std::time::SystemTime::now(),
        )?;
        let server = format!("https://{host}");
        let kubeconfig = skiff_client::kubeconfig::render_with(
            &server,
            &skiff_client::kubeconfig::Credentials {
                ca_pem: Some(pki.ca_pem()),
                client_certificate_pem: Some(&admin.cert_pem),
                client_key_pem: Some(&admin.key_pem),
                token: None,
            },
        );
        Ok(Secured {
            security: skiff_control::ApiSecurity::Tls(std::sync::Arc::new(pki)),
            server,
            kubeconfig,
        })
    }
}

/// The cluster's address ranges and the API server's advertised address, named as k3s
/// names them.
#[derive(Debug, Clone, clap::Args)]
pub struct NetworkArgs {
    /// The range Service cluster IPs come from; its first address is the `kubernetes`
    /// Service's.
    #[arg(long, default_value = "10.43.0.0/16", value_parser = parse_cidr)]
    service_cidr: Ipv4Cidr,
    /// The range pod addresses come from, split into one subnet per node.
    #[arg(long, default_value = "10.42.0.0/16", value_parser = parse_cidr)]
    cluster_cidr: Ipv4Cidr,
    /// The prefix length of each node's pod subnet.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(0..=32))]
    node_cidr_mask_size: u8,
    /// The ports NodePort Services get, inclusive (FIRST-LAST).
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    service_node_port_range: (u16, u16),
    /// The address the `default/kubernetes` Endpoints give for the API server (default:
    /// the listen address, or loopback when listening on every address).
    #[arg(long)]
    advertise_address: Option<IpAddr>,
}

impl NetworkArgs {
    /// The allocation ranges, checked together (a node subnet must fit the cluster CIDR).
    pub fn allocation(&self) -> Result<skiff_control::allocator::AllocationConfig> {
        let config = skiff_control::allocator::AllocationConfig {
            service_cidr: self.service_cidr,
            cluster_cidr: self.cluster_cidr,
            node_cidr_prefix: self.node_cidr_mask_size,
            node_ports: self.service_node_port_range,
        };
        config
            .ranges()
            .map_err(|e| anyhow::anyhow!("invalid network settings: {e}"))?;
        Ok(config)
    }

    pub fn advertise_address(&self) -> Option<IpAddr> {
        self.advertise_address
    }

    /// `skiff up`'s default advertised address is the node's (k3s: `--node-ip`).
    /// The service CIDR, which the node's service proxy routes locally.
    pub fn service_cidr(&self) -> Ipv4Cidr {
        self.service_cidr
    }

    pub fn advertise_address_or(&self, node: IpAddr) -> Option<IpAddr> {
        self.advertise_address.or(Some(node))
    }
}

pub(crate) fn parse_cidr(s: &str) -> Result<Ipv4Cidr, String> {
    s.parse::<Ipv4Cidr>().map_err(|e| e.to_string())
}

/// `FIRST-LAST`, as `--service-node-port-range` takes it.
fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let invalid = || format!("invalid port range {s:?}: expected FIRST-LAST such as 30000-32767");
    let (first, last) = s.split_once('-').ok_or_else(invalid)?;
    let first: u16 = first.trim().parse().map_err(|_| invalid())?;
    let last: u16 = last.trim().parse().map_err(|_| invalid())?;
    skiff_control::allocator::Range::ports(first, last).map_err(|e| e.to_string())?;
    Ok((first, last))
}

/// Node lifecycle timers of the controller manager.
#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    /// Seconds without a lease renewal before a node is unreachable.
    #[arg(long, default_value_t = 50)]
    node_monitor_grace_period: u64,
    /// Seconds pods tolerate an unreachable node unless their spec says otherwise.
    #[arg(long, default_value_t = 300)]
    default_toleration_seconds: u64,
    /// Use test timers: unreachable after 4 s, evicted 2 s later.
    #[arg(long)]
    fast_node_lifecycle: bool,
}

impl ControllerArgs {
    pub fn config(&self) -> skiff_controllers::ControllerConfig {
        if self.fast_node_lifecycle {
            return skiff_controllers::ControllerConfig::fast();
        }
        skiff_controllers::ControllerConfig {
            node_monitor_grace_period: std::time::Duration::from_secs(
                self.node_monitor_grace_period.max(1),
            ),
            default_toleration_seconds: self.default_toleration_seconds,
            ..Default::default()
        }
    }
}

pub async fn run(args: ControlArgs) -> Result<ExitCode> {
    // Checked before anything is bound or written: a bad range is a usage error.
    let allocation = args.network.allocation()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data directory {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let secured = args.security.secure(
        &args.data_dir,
        listener.local_addr()?,
        args.network.advertise_address(),
        allocation.ranges()?.kubernetes_service_ip(),
    )?;
    let server = secured.server.clone();
    let kubeconfig_path = args.data_dir.join("kubeconfig");
    write_private(&kubeconfig_path, secured.kubeconfig.as_bytes())
        .with_context(|| format!("cannot write {}", kubeconfig_path.display()))?;
    let config = skiff_control::ControlConfig {
        store_dir: args.data_dir.join("store"),
        store: skiff_control::store::StoreConfig {
            history_capacity: args.watch_history,
        },
        controllers: args.controllers.config(),
        allocation,
        advertise_address: args.network.advertise_address(),
        security: secured.security,
        limits: args.security.limits(),
        audit: args.security.audit(),
        ..Default::default()
    };
    eprintln!("skiff control: serving the API at {server}");
    eprintln!(
        "skiff control: kubeconfig written to {}",
        kubeconfig_path.display()
    );
    eprintln!(
        "  try: kubectl --kubeconfig {} get namespaces",
        kubeconfig_path.display()
    );
    skiff_control::run(config, listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Writes a file that holds a secret (a kubeconfig with a key): 0600 from creation on,
/// and atomically.
pub fn write_private(path: &std::path::Path, contents: &[u8]) -> Result<()> {
    skiff_control::pki::write_private(path, contents)?;
    Ok(())
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        network: NetworkArgs,
    }

    fn parse(args: &[&str]) -> Result<NetworkArgs, String> {
        let argv = std::iter::once("skiff").chain(args.iter().copied());
        Flags::try_parse_from(argv)
            .map(|f| f.network)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn network_flags_default_to_k3s_ranges() {
        let config = parse(&[]).unwrap().allocation().unwrap();
        assert_eq!(
            config,
            skiff_control::allocator::AllocationConfig::default()
        );
    }

    #[test]
    fn network_flags_parse() {
        let network = parse(&[
            "--service-cidr",
            "10.96.0.0/12",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--node-cidr-mask-size",
            "26",
            "--service-node-port-range",
            "31000-31999",
            "--advertise-address",
            "192.168.1.5",
        ])
        .unwrap();
        let config = network.allocation().unwrap();
        assert_eq!(config.service_cidr.to_string(), "10.96.0.0/12");
        assert_eq!(config.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(config.node_cidr_prefix, 26);
        assert_eq!(config.node_ports, (31000, 31999));
        assert_eq!(
            network.advertise_address(),
            Some(IpAddr::from([192, 168, 1, 5]))
        );
    }

    #[test]
    fn bad_network_flags_are_refused() {
        for (flag, value) in [
            ("--service-cidr", "10.43.0.0"),
            ("--service-cidr", "10.43.0.0/33"),
            ("--cluster-cidr", "fd00::/8"),
            ("--node-cidr-mask-size", "33"),
            ("--node-cidr-mask-size", "x"),
            ("--service-node-port-range", "32767-30000"),
            ("--service-node-port-range", "0-100"),
            ("--service-node-port-range", "30000"),
            ("--service-node-port-range", "30000-70000"),
        ] {
            let error = parse(&[flag, value]).expect_err(value);
            assert!(error.contains(flag), "{flag} {value}: {error}");
        }
        // Each value parses, but together they do not fit.
        for args in [
            [
                "--cluster-cidr",
                "10.42.0.0/16",
                "--node-cidr-mask-size",
                "8",
            ],
            [
                "--service-cidr",
                "10.43.0.0/30",
                "--node-cidr-mask-size",
                "24",
            ],
        ] {
            let error = parse(&args).unwrap().allocation().unwrap_err().to_string();
            assert!(error.starts_with("invalid network settings"), "{error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }
}
