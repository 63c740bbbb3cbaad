//! An in-cluster API client, as client-go's `rest.InClusterConfig` sets one up: the API
//! server from `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`, the pod's
//! service-account token, CA and namespace from
//! `/var/run/secrets/kubernetes.io/serviceaccount`. It lists the pods of its namespace
//! over HTTPS (the node verifies the server against the cluster CA) and prints the
//! status code and each pod's name, or the error Status; exits 0 only on 200.
use wstd::http::body::Body;
use wstd::http::{Client, Request};

const ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[wstd::main]
async fn main() -> Result<(), String> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST")
        .map_err(|_| "KUBERNETES_SERVICE_HOST is not set: not in a cluster".to_string())?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let read = |file: &str| {
        std::fs::read_to_string(format!("{ACCOUNT_DIR}/{file}"))
            .map_err(|e| format!("reading {ACCOUNT_DIR}/{file}: {e}"))
    };
    let token = read("token")?;
    let namespace = read("namespace")?;
    let ca = read("ca.crt")?;
    if !ca.contains("BEGIN CERTIFICATE") {
        return Err(format!("{ACCOUNT_DIR}/ca.crt holds no certificate"));
    }
    let url = format!("https://{host}:{port}/api/v1/namespaces/{namespace}/pods");
    let request = Request::get(&url)
        .header("Authorization", format!("Bearer {}", token.trim()))
        .header("Accept", "application/json")
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let mut response = Client::new()
        .send(request)
        .await
        .map_err(|e| format!("GET {url}: {e:?}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .str_contents()
        .await
        .map_err(|e| format!("reading the answer: {e:?}"))?
        .to_string();
    println!("GET /api/v1/namespaces/{namespace}/pods: {status}");
    let answer: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    if status != 200 {
        println!("message: {}", answer["message"].as_str().unwrap_or_default());
        return Err(format!("the API server answered {status}"));
    }
    for pod in answer["items"].as_array().into_iter().flatten() {
        println!("pod: {}", pod["metadata"]["name"].as_str().unwrap_or_default());
    }
    Ok(())
}
