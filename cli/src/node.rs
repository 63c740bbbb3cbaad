//! `skiff node` (a node agent joining a cluster) and `skiff up` (control plane, scheduler
//! and one node agent in one process on the embedded store).

use crate::control::{shutdown_signal, write_private};
use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde_json::{json, Value};
use skiff_node::images::ApiImageSource;
use skiff_node::runtimes::RuntimeRegistry;
use skiff_node::NodeConfig;
use skiff_runtime::wasm::{WasmRuntime, WasmRuntimeConfig};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Settings shared by `skiff node` and `skiff up`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Node name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// The node's address as other nodes and the API server reach it.
    #[arg(long, default_value = "127.0.0.1")]
    address: IpAddr,
    /// Where the agent serves container logs and port-forward tunnels for the API server
    /// (port 0 picks one; default: the node's --address, so a remote API server reaches it).
    #[arg(long)]
    log_listen: Option<SocketAddr>,
    /// Taints to register with: key=value:Effect,...
    #[arg(long = "register-with-taints", default_value = "")]
    taints: String,
    /// Labels to add to the Node: key=value,...
    #[arg(long = "node-labels", default_value = "")]
    labels: String,
    /// Pods (guests) this node runs at most.
    #[arg(long, default_value_t = 1000)]
    max_pods: u32,
    /// Seconds between lease renewals; keep it well under the control plane's
    /// node-monitor grace period.
    #[arg(long, default_value_t = 10.0)]
    heartbeat_interval: f64,
    /// Where the built-in Ingress proxy answers HTTP.
    #[arg(long, default_value = "0.0.0.0:80")]
    ingress_http_listen: SocketAddr,
    /// Where the built-in Ingress proxy answers HTTPS (SNI picks the Secret).
    #[arg(long, default_value = "0.0.0.0:443")]
    ingress_https_listen: SocketAddr,
    /// Run no Ingress proxy on this node.
    #[arg(long)]
    disable_ingress: bool,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The API server URL (default: from the kubeconfig).
    #[arg(long)]
    server: Option<String>,
    /// A bootstrap token to join with (`skiff token create`); used once, when the data
    /// directory holds no node credentials yet.
    #[arg(long)]
    token: Option<String>,
    /// `sha256:<hex>` of the cluster CA's public key, checked before the token is sent.
    #[arg(long)]
    ca_cert_hash: Option<String>,
    /// Join without --ca-cert-hash, trusting whatever CA the server presents.
    #[arg(long)]
    discovery_token_unsafe_skip_ca_verification: bool,
    #[arg(long)]
    data_dir: PathBuf,
    /// The cluster's Service range (as the control plane's `--service-cidr`): the node
    /// routes it locally so ClusterIPs reach the service proxy.
    #[arg(long, default_value = "10.43.0.0/16", value_parser = crate::control::parse_cidr)]
    service_cidr: skiff_api::cidr::Ipv4Cidr,
    #[command(flatten)]
    agent: AgentArgs,
    #[command(flatten)]
    dns: crate::dns::DnsArgs,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Where the built wasm-examples are (default: next to this binary's build).
    #[arg(long)]
    examples: Option<PathBuf>,
    /// Do not start the example pod.
    #[arg(long)]
    no_example: bool,
    #[command(flatten)]
    controllers: crate::control::ControllerArgs,
    #[command(flatten)]
    network: crate::control::NetworkArgs,
    #[command(flatten)]
    security: crate::control::SecurityArgs,
    #[command(flatten)]
    agent: AgentArgs,
    #[command(flatten)]
    dns: crate::dns::DnsArgs,
}

impl AgentArgs {
    fn log_endpoint(&self) -> SocketAddr {
        self.log_listen
            .unwrap_or_else(|| SocketAddr::new(self.address, 0))
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .ok()
        .filter(|s| !s.is_empty() && skiff_api::validation::dns1123_subdomain_errors(s).is_none())
        .unwrap_or_else(|| "skiff-node".into())
}

fn node_config(agent: &AgentArgs, data_dir: &Path) -> Result<NodeConfig> {
    let name = agent.name.clone().unwrap_or_else(host_name);
    if let Some(e) = skiff_api::validation::dns1123_subdomain_errors(&name) {
        bail!("invalid node name {name:?}: {e}");
    }
    let mut config = NodeConfig::new(&name, data_dir.to_path_buf());
    config.address = agent.address;
    config.max_pods = agent.max_pods;
    if !(agent.heartbeat_interval > 0.0 && agent.heartbeat_interval.is_finite()) {
        bail!("--heartbeat-interval must be a positive number of seconds");
    }
    config.renew_interval = std::time::Duration::from_secs_f64(agent.heartbeat_interval);
    config.taints =
        skiff_node::registration::parse_taints(&agent.taints).map_err(anyhow::Error::msg)?;
    let mut labels = BTreeMap::new();
    for pair in agent.labels.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("node label {pair:?} is not key=value"))?;
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    config.labels = labels;
    if !agent.disable_ingress {
        config.ingress_http = Some(agent.ingress_http_listen);
        config.ingress_https = Some(agent.ingress_https_listen);
    }
    Ok(config)
}

fn wasm_runtime(
    data_dir: &Path,
    max_pods: u32,
    client: &skiff_client::Client,
) -> Result<WasmRuntime<ApiImageSource>> {
    let mut config = WasmRuntimeConfig::new(data_dir.join("runtime"));
    config.max_instances = max_pods;
    Ok(WasmRuntime::new(
        config,
        ApiImageSource {
            client: client.clone(),
        },
    )?)
}

/// Pods' in-process name lookups answered from the node-local DNS add-on's zone, for
/// pods whose resolver names the cluster DNS, along their search path.
struct ZoneResolver {
    zone: skiff_dns_addon::server::SharedZone,
    cluster_dns: IpAddr,
}

impl skiff_runtime::NameResolver for ZoneResolver {
    fn resolve(&self, caller: &skiff_runtime::CallerPod, name: &str) -> Vec<IpAddr> {
        let zone = self.zone.read().unwrap_or_else(|e| e.into_inner()).clone();
        match &caller.dns {
            None => zone.resolve(&caller.namespace, name),
            Some(conf) if conf.nameservers.contains(&self.cluster_dns) => {
                zone.resolve_with(&conf.searches, conf.ndots(), name)
            }
            // `dnsPolicy: Default` or `None` without the cluster DNS: the node's
            // resolver, which pods may not reach (egress is the cluster's only).
            Some(_) => Vec::new(),
        }
    }
}

async fn run_agent(
    config: NodeConfig,
    client: skiff_client::Client,
    log_listen: SocketAddr,
    dns: Option<skiff_dns_addon::run::DnsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    // The node-local DNS add-on, bound before the agent starts so a taken address is a
    // start-up error; it stops with the agent.
    let (stop_dns, dns_stopped) = tokio::sync::oneshot::channel::<()>();
    let wasm = wasm_runtime(&config.data_dir, config.max_pods, &client)?;
    // One list+watch per collection for the whole node: the DNS add-on, the service
    // proxy and the Ingress proxy share the Services and EndpointSlices they watch.
    let factory = skiff_client::factory::SharedInformerFactory::new(client);
    let dns = match dns {
        Some(config) => {
            let zone = skiff_dns_addon::run::shared_zone(&config.zone);
            let cluster_dns = config.listen[0].ip();
            let addon = skiff_dns_addon::run::bind_all(config)?;
            // Wasm pods' name lookups read the same zone, in-process.
            let resolver = ZoneResolver {
                zone: zone.clone(),
                cluster_dns,
            };
            skiff_runtime::RuntimeService::set_name_resolver(&wasm, Arc::new(resolver));
            Some(tokio::spawn(addon.run(factory.clone(), zone, async move {
                let _ = dns_stopped.await;
            })))
        }
        None => None,
    };
    // The wasm backend is the default; more backends register under their handlers here.
    let runtimes = RuntimeRegistry::new(skiff_runtime::wasm::HANDLER, Arc::new(wasm));
    let listener = tokio::net::TcpListener::bind(log_listen)
        .await
        .with_context(|| format!("cannot listen on {log_listen}"))?;
    let agent = skiff_node::run(
        config,
        factory,
        runtimes,
        listener,
        skiff_api::clock::system(),
        shutdown,
    )
    .await;
    let _ = stop_dns.send(());
    if let Some(dns) = dns {
        let _ = dns.await;
    }
    agent?;
    Ok(())
}

/// The node's client: an explicit `--kubeconfig`, else the credentials an earlier join
/// left in the data directory, else a join with `--token`, else `--server` alone (an
/// `--insecure-http` cluster) or the discovered kubeconfig.
async fn node_client(
    context: &crate::get::Context,
    args: &NodeArgs,
    node_name: &str,
) -> Result<skiff_client::Client> {
    let own = crate::join::node_kubeconfig(&args.data_dir);
    if context.kubeconfig.is_none() && own.exists() {
        return Ok(skiff_client::Client::from_kubeconfig(Some(&own))?);
    }
    if let Some(token) = &args.token {
        let server = args.server.as_deref().context("--token needs --server")?;
        if args.ca_cert_hash.is_none() && !args.discovery_token_unsafe_skip_ca_verification {
            bail!("--token needs --ca-cert-hash sha256:<hex> (or --discovery-token-unsafe-skip-ca-verification)");
        }
        return crate::join::join(crate::join::Join {
            server,
            token,
            ca_cert_hash: args.ca_cert_hash.as_deref(),
            node_name,
            data_dir: &args.data_dir,
        })
        .await;
    }
    match &args.server {
        Some(server) if context.kubeconfig.is_none() => Ok(skiff_client::Client::new(server)?),
        _ => context.client(),
    }
}

/// The CA a secured cluster's kubeconfig trusts (`None` for an `http://` cluster).
fn cluster_ca(
    context: &crate::get::Context,
    args: &NodeArgs,
    client: &skiff_client::Client,
) -> Result<Option<Vec<u8>>> {
    if !client.server().starts_with("https://") {
        return Ok(None);
    }
    let own = crate::join::node_kubeconfig(&args.data_dir);
    let path = match &context.kubeconfig {
        Some(explicit) => Some(explicit.as_path()),
        None if own.exists() => Some(own.as_path()),
        None => None,
    };
    let connection = skiff_client::kubeconfig::Kubeconfig::discover(path)?.current_connection()?;
    let ca = connection.http.tls.ca_pem;
    if ca.is_empty() {
        bail!(
            "the kubeconfig trusts no CA for {}: the node's endpoint needs the cluster CA",
            client.server()
        );
    }
    Ok(Some(ca))
}

pub async fn node(context: &crate::get::Context, args: NodeArgs) -> Result<ExitCode> {
    let mut config = node_config(&args.agent, &args.data_dir)?;
    let client = node_client(context, &args, &config.name).await?;
    config.cluster_ca_pem = cluster_ca(context, &args, &client)?;
    config.service_cidr = Some(args.service_cidr);
    let node_dns = args.dns.node(args.service_cidr)?;
    (config.cluster_dns, config.host_dns) = (node_dns.cluster, node_dns.host);
    let dns = node_dns.addon;
    raise_open_file_limit();
    eprintln!("skiff node {}: joining {}", config.name, client.server());
    run_agent(
        config,
        client,
        args.agent.log_endpoint(),
        dns,
        shutdown_signal(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// The default place of the built examples: `<target>/wasm-examples` for a binary in
/// `<target>/<profile>/skiff`.
fn default_examples() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join("wasm-examples"))
}

/// The example pod `skiff up` starts: the ticker, logging once a second. Its module is
/// pushed into the cluster as `examples/ticker:latest`, the way users ship theirs.
async fn example_pod(client: &skiff_client::Client, examples: &Path) -> Option<Value> {
    let module = std::fs::read(examples.join("wasm32-wasip2/release/ticker.wasm")).ok()?;
    let reference = "examples/ticker:latest";
    if let Err(e) = client
        .put_bytes(
            &format!("/skiff/v1/images/{reference}"),
            "application/wasm",
            module,
        )
        .await
    {
        eprintln!("skiff up: could not push the example module: {e}");
        return None;
    }
    Some(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ticker", "namespace": "default", "labels": {"app": "ticker"}},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "ticker",
                "image": reference,
                "resources": {"limits": {"memory": "32Mi", "cpu": "100m"}},
            }],
        },
    }))
}

pub async fn up(args: UpArgs) -> Result<ExitCode> {
    raise_open_file_limit();
    // Checked before anything is bound or written: a bad range is a usage error.
    let allocation = args.network.allocation()?;
    let node_dns = args.dns.node(args.network.service_cidr())?;
    let dns = node_dns.addon;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let advertise = args.network.advertise_address_or(args.agent.address);
    let secured = args.security.secure(
        &args.data_dir,
        listener.local_addr()?,
        advertise,
        allocation.ranges()?.kubernetes_service_ip(),
    )?;
    let server = secured.server.clone();
    let kubeconfig = args.data_dir.join("kubeconfig");
    write_private(&kubeconfig, secured.kubeconfig.as_bytes())?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let control_config = skiff_control::ControlConfig {
        store_dir: args.data_dir.join("store"),
        controllers: args.controllers.config(),
        allocation,
        advertise_address: advertise,
        security: secured.security.clone(),
        limits: args.security.limits(),
        audit: args.security.audit(),
        ..Default::default()
    };
    let control = tokio::spawn(skiff_control::run(
        control_config,
        listener,
        wait(stopped.clone()),
    ));
    let mut config = node_config(&args.agent, &args.data_dir.join("node"))?;
    // The agent beside the control plane has a node's credential, as any other: the
    // Node authorizer limits it to this node's objects.
    let node_user = format!("system:node:{}", config.name);
    let client = secured.client_as(&node_user, &["system:nodes"])?;
    config.cluster_ca_pem = secured.pki().map(|pki| pki.ca_pem().as_bytes().to_vec());
    wait_until_ready(&client).await?;
    let admin = secured.client_as(
        skiff_control::pki::ADMIN_USER,
        &[skiff_control::pki::MASTERS_GROUP],
    )?;
    config.service_cidr = Some(args.network.service_cidr());
    (config.cluster_dns, config.host_dns) = (node_dns.cluster, node_dns.host);
    // The agent beside the control plane renews its lease well within the grace period
    // the control plane was given (the fast profile's is 4 s).
    let grace = control_grace(&args.controllers);
    config.renew_interval = config.renew_interval.min(grace / 4);
    let node_name = config.name.clone();
    let agent = tokio::spawn(run_agent(
        config,
        client.clone(),
        args.agent.log_endpoint(),
        dns,
        wait(stopped.clone()),
    ));
    eprintln!("skiff up: API server at {server}, node {node_name}");
    eprintln!("skiff up: kubeconfig written to {}", kubeconfig.display());
    if !args.no_example {
        let pod = match args.examples.clone().or_else(default_examples) {
            Some(dir) => example_pod(&admin, &dir).await,
            None => None,
        };
        match pod {
            Some(pod) => {
                let pods = &skiff_api::resource::PODS;
                match admin.create(pods, Some("default"), &pod).await {
                    Ok(_) => eprintln!("skiff up: started the example pod `ticker` (a wasm module logging once a second)"),
                    Err(e) if e.code() == Some(409) => eprintln!("skiff up: the example pod `ticker` exists already"),
                    Err(e) => eprintln!("skiff up: could not create the example pod: {e}"),
                }
            }
            None => eprintln!("skiff up: no built examples found (run scripts/build-examples.sh); starting without the example pod"),
        }
    }
    eprintln!("  try: export KUBECONFIG={}", kubeconfig.display());
    eprintln!("       kubectl get nodes,pods -o wide");
    eprintln!("       kubectl logs -f ticker");
    tokio::select! {
        _ = shutdown_signal() => {}
        result = agent => {
            // The agent ended on its own: report why, then stop the rest.
            let _ = stop.send(true);
            let _ = control.await;
            return match result {
                Ok(Ok(())) => Ok(ExitCode::SUCCESS),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow::anyhow!("the node agent failed: {e}")),
            };
        }
    }
    let _ = stop.send(true);
    let _ = control.await;
    Ok(ExitCode::SUCCESS)
}

fn control_grace(args: &crate::control::ControllerArgs) -> std::time::Duration {
    args.config().node_monitor_grace_period
}

async fn wait_until_ready(client: &skiff_client::Client) -> Result<()> {
    for _ in 0..200 {
        if client
            .request(skiff_client::Method::Get, "/version", None, None)
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    bail!("the API server did not come up")
}

/// The agent keeps each running container's log file open, so tens of thousands of pods
/// need more descriptors than a login shell's default limit. Like kubelet and containerd
/// (`LimitNOFILE=1048576` in their units), raise the limit as far as the kernel allows:
/// both limits up to `fs.nr_open` when permitted (root), else the soft limit to the hard
/// one. Failing to raise it is not fatal; pods past the limit report the error.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let wanted = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20)
        .min(1 << 20);
    let current = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: Some(wanted),
        maximum: Some(wanted),
    };
    if current.current.is_some_and(|c| c >= wanted) {
        return;
    }
    if setrlimit(Resource::Nofile, raised).is_err() {
        let soft_to_hard = Rlimit {
            current: current.maximum,
            maximum: current.maximum,
        };
        let _ = setrlimit(Resource::Nofile, soft_to_hard);
    }
}
