//! The client over real TLS: a rustls server on loopback that requires a client
//! certificate signed by the test CA, and clients with and without the right CA and
//! identity. Nothing is mocked: the handshake, the certificate checks and the HTTP
//! exchange are the real ones.

use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use skiff_client::{Client, HttpConfig, TlsConfig};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Pki {
    ca_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: PrivateKeyDer<'static>,
    ca_der: CertificateDer<'static>,
    client_identity_pem: String,
    stranger_identity_pem: String,
}

fn make_pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "skiff test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(DnType::CommonName, "skiff-admin");
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();

    // A client certificate from a CA the server does not trust.
    let other_ca_key = KeyPair::generate().unwrap();
    let mut other_ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    other_ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_issuer = Issuer::new(other_ca_params, other_ca_key);
    let stranger_key = KeyPair::generate().unwrap();
    let stranger_cert = CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .signed_by(&stranger_key, &other_issuer)
        .unwrap();

    Pki {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().clone(),
        server_cert: server_cert.der().clone(),
        server_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        client_identity_pem: format!("{}\n{}", client_cert.pem(), client_key.serialize_pem()),
        stranger_identity_pem: format!("{}\n{}", stranger_cert.pem(), stranger_key.serialize_pem()),
    }
}

/// Serves HTTPS on loopback, requiring a client certificate from the test CA; answers
/// every request with a Status-shaped JSON body naming the path it was asked for.
async fn serve(pki: &Pki) -> (String, tokio::task::JoinHandle<()>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.server_cert.clone()], pki.server_key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        // Bounded: the tests make a handful of connections.
        for _ in 0..16 {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&request);
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let body = format!(
                    r#"{{"kind":"Status","apiVersion":"v1","status":"Success","message":"served {path} over mutual TLS"}}"#
                );
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (format!("https://localhost:{}", address.port()), task)
}

fn config(ca_pem: &str, identity_pem: Option<&str>) -> HttpConfig {
    HttpConfig {
        tls: TlsConfig {
            ca_pem: ca_pem.as_bytes().to_vec(),
            identity_pem: identity_pem.map(|p| p.as_bytes().to_vec()),
            insecure_skip_verify: false,
        },
        ..HttpConfig::default()
    }
}

#[tokio::test]
async fn mutual_tls_with_the_cluster_ca_and_a_client_certificate() {
    let pki = make_pki();
    let (server, task) = serve(&pki).await;
    let client = Client::with_config(
        &server,
        &config(&pki.ca_pem, Some(&pki.client_identity_pem)),
    )
    .unwrap();
    let answer = client
        .request(skiff_client::Method::Get, "/version", None, None)
        .await
        .unwrap();
    assert_eq!(answer["message"], "served /version over mutual TLS");
    task.abort();
}

#[tokio::test]
async fn a_server_signed_by_an_unknown_ca_is_refused() {
    let pki = make_pki();
    let (server, task) = serve(&pki).await;
    // Trusts nothing: no CA given, and the system roots are never used.
    let client = Client::with_config(&server, &config("", Some(&pki.client_identity_pem))).unwrap();
    let error = client
        .request(skiff_client::Method::Get, "/version", None, None)
        .await
        .unwrap_err();
    assert!(error.is_transport(), "{error}");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "the error names the certificate problem: {error}"
    );
    task.abort();
}

#[tokio::test]
async fn a_client_without_an_accepted_certificate_is_refused() {
    let pki = make_pki();
    let (server, task) = serve(&pki).await;
    for identity in [None, Some(pki.stranger_identity_pem.as_str())] {
        let client = Client::with_config(&server, &config(&pki.ca_pem, identity)).unwrap();
        let result = client
            .request(skiff_client::Method::Get, "/version", None, None)
            .await;
        assert!(
            matches!(&result, Err(e) if e.is_transport()),
            "identity {:?}: {result:?}",
            identity.is_some()
        );
    }
    task.abort();
}

#[test]
fn malformed_tls_material_is_a_clear_error_not_a_panic() {
    let bad_ca = Client::with_config("https://localhost:1", &config("not a certificate", None));
    assert!(bad_ca.is_err());
    let bad_identity = Client::with_config(
        "https://localhost:1",
        &config(
            "",
            Some("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n"),
        ),
    );
    assert!(bad_identity.is_err());
}
