//! Joining a node with a bootstrap token (`skiff node --server URL --token T
//! --ca-cert-hash sha256:H`), as kubeadm joins one: fetch the CA anonymously from
//! `kube-public/cluster-info`, check it against the pinned hash *before* the token is
//! sent anywhere, then — now trusting that CA — ask for the node's client certificate
//! with the token (a CertificateSigningRequest the control plane approves for
//! bootstrappers), and keep the result as the node's own kubeconfig. Later starts use
//! that kubeconfig and need no token. And `skiff token create`.

use anyhow::{bail, Context as _, Result};
use skiff_client::Client;
use std::path::Path;
use std::time::Duration;

/// How long a join waits for its certificate.
const SIGNING_TIMEOUT: Duration = Duration::from_secs(60);

/// The node's kubeconfig in its data directory, written by the first join.
pub fn node_kubeconfig(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("kubeconfig")
}

/// What a join needs.
pub struct Join<'a> {
    pub server: &'a str,
    pub token: &'a str,
    /// `sha256:<hex>` of the CA's public key; `None` only with the unsafe flag.
    pub ca_cert_hash: Option<&'a str>,
    pub node_name: &'a str,
    pub data_dir: &'a Path,
}

/// Joins the cluster and returns a client with the node's own credential.
pub async fn join(join: Join<'_>) -> Result<Client> {
    let token = skiff_control::auth::tokens::BootstrapToken::parse(join.token)
        .context("--token must look like abcdef.0123456789abcdef ([a-z0-9]{6}.[a-z0-9]{16})")?;
    let ca_pem = discover_ca(join.server, join.ca_cert_hash).await?;
    let config = skiff_client::HttpConfig {
        tls: skiff_client::TlsConfig {
            ca_pem: ca_pem.clone().into_bytes(),
            identity_pem: None,
            insecure_skip_verify: false,
        },
        bearer_token: Some(token.reveal()),
        ..skiff_client::HttpConfig::default()
    };
    let bootstrap = Client::with_config(join.server, &config)?;
    let user = format!("system:node:{}", join.node_name);
    let request = skiff_control::pki::client_key_and_request(&user, "system:nodes")?;
    let certificate = request_certificate(&bootstrap, join.node_name, &request.cert_pem).await?;
    let kubeconfig = skiff_client::kubeconfig::render_with(
        join.server,
        &skiff_client::kubeconfig::Credentials {
            ca_pem: Some(&ca_pem),
            client_certificate_pem: Some(&certificate),
            client_key_pem: Some(&request.key_pem),
            token: None,
        },
    );
    std::fs::create_dir_all(join.data_dir)?;
    let path = node_kubeconfig(join.data_dir);
    crate::control::write_private(&path, kubeconfig.as_bytes())?;
    eprintln!(
        "skiff node {}: joined; credentials kept in {}",
        join.node_name,
        path.display()
    );
    Ok(Client::from_kubeconfig(Some(&path))?)
}

/// The cluster's CA from `cluster-info`, fetched without trusting the server (there is
/// nothing to trust yet) and without any credential, then pinned.
async fn discover_ca(server: &str, pinned: Option<&str>) -> Result<String> {
    let unverified = skiff_client::HttpConfig {
        tls: skiff_client::TlsConfig {
            insecure_skip_verify: true,
            ..skiff_client::TlsConfig::default()
        },
        ..skiff_client::HttpConfig::default()
    };
    let client = Client::with_config(server, &unverified)?;
    let info = client
        .get(
            &skiff_api::resource::CONFIG_MAPS,
            Some(skiff_control::bootstrap::CLUSTER_INFO_NAMESPACE),
            skiff_control::bootstrap::CLUSTER_INFO_NAME,
        )
        .await
        .with_context(|| format!("cannot read the cluster's CA from {server}"))?;
    let kubeconfig = info["data"]["kubeconfig"]
        .as_str()
        .context("cluster-info has no kubeconfig")?;
    let connection =
        skiff_client::kubeconfig::Kubeconfig::parse(kubeconfig)?.current_connection()?;
    let ca_pem = String::from_utf8(connection.http.tls.ca_pem)
        .context("cluster-info's CA is not PEM text")?;
    let hash = skiff_control::pki::ca_cert_hash_of_pem(ca_pem.as_bytes())?;
    match pinned {
        Some(pinned) if pinned.eq_ignore_ascii_case(&hash) => Ok(ca_pem),
        Some(pinned) => bail!(
            "the server's CA does not match --ca-cert-hash (it has {hash}, expected {pinned}): not sending the token; is this the right server?"
        ),
        None => {
            eprintln!("skiff node: WARNING: joining without --ca-cert-hash trusts whatever CA the server sent ({hash})");
            Ok(ca_pem)
        }
    }
}

/// Creates the node's CSR and waits until it is signed.
async fn request_certificate(
    client: &Client,
    node_name: &str,
    request_pem: &str,
) -> Result<String> {
    let name = format!("node-csr-{node_name}-{:08x}", rand_suffix());
    let request = skiff_client::certificates::CertificateRequest {
        name: &name,
        request_pem,
        signer_name: skiff_control::csr::KUBELET_CLIENT_SIGNER,
        usages: &["digital signature", "client auth"],
        timeout: SIGNING_TIMEOUT,
    };
    let pem = skiff_client::certificates::request_certificate(client, request)
        .await
        .context("the control plane did not give the node a certificate (is the token valid and unexpired?)")?;
    Ok(String::from_utf8(pem)?)
}

fn rand_suffix() -> u32 {
    rand::random()
}

/// `skiff token create`: a bootstrap token for joining nodes.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Create a bootstrap token (a Secret in kube-system) and print it.
    Create {
        /// How long the token is valid, in hours (kubeadm's default: 24).
        #[arg(long, default_value_t = 24)]
        ttl_hours: u64,
        /// Print the whole `skiff node` command that joins with it.
        #[arg(long)]
        print_join_command: bool,
    },
}

pub async fn token(
    context: &crate::get::Context,
    args: TokenArgs,
) -> Result<std::process::ExitCode> {
    let TokenCommand::Create {
        ttl_hours,
        print_join_command,
    } = args.command;
    if ttl_hours == 0 || ttl_hours > 24 * 365 {
        bail!("--ttl-hours must be between 1 and 8760");
    }
    let client = context.client()?;
    // rand's thread generator is a CSPRNG seeded from the OS: the secret half must be
    // unguessable.
    let mut random = rand::random::<u32>;
    let token = skiff_control::auth::tokens::BootstrapToken::generate(&mut random);
    let expiration = chrono::Utc::now() + chrono::Duration::hours(i64::try_from(ttl_hours)?);
    let secret =
        token.secret_object(&expiration.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    client
        .create(
            &skiff_api::resource::SECRETS,
            Some(skiff_control::auth::tokens::BOOTSTRAP_TOKEN_NAMESPACE),
            &secret,
        )
        .await?;
    if !print_join_command {
        println!("{}", token.reveal());
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let kubeconfig = skiff_client::kubeconfig::Kubeconfig::discover(context.kubeconfig.as_deref())?;
    let connection = kubeconfig.current_connection()?;
    let hash = skiff_control::pki::ca_cert_hash_of_pem(&connection.http.tls.ca_pem)
        .context("the kubeconfig has no CA to pin")?;
    println!(
        "skiff node --server {} --token {} --ca-cert-hash {hash} --data-dir <dir>",
        connection.server,
        token.reveal()
    );
    Ok(std::process::ExitCode::SUCCESS)
}
