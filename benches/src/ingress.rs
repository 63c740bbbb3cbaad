//! `skiff-bench ingress`: HTTP through the built-in Ingress proxy of `skiff up` to a
//! wasi:http pod (the `http-hello` example; the proxy calls the wasm pod in-process),
//! against `nginx` (Debian) proxying to the same pod's IP, in the same run. nginx gets
//! the configuration a tuned ingress-nginx would use: as many workers as CPUs, upstream
//! keep-alive (HTTP/1.1 to the pod), no access log. wrk at each concurrency (64 by
//! default) over interleaved rounds; medians of req/s and p50/p99 and the ratio to nginx
//! are printed, and the pod's IP served directly as a reference.

use crate::cluster::{self, free_port};
use crate::http::{
    first_pod_ip, hello_component, print_medians, serving_cluster, wait_answer, wrk, Run,
};
use anyhow::{Context, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct IngressArgs {
    /// The `skiff` binary (default: beside this one).
    #[arg(long)]
    skiff: Option<PathBuf>,
    /// The built wasm-examples directory.
    #[arg(long)]
    examples: PathBuf,
    /// Seconds per measured wrk run.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Interleaved rounds over every target and concurrency.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, value_delimiter = ',', default_value = "64")]
    concurrency: Vec<u32>,
}

/// The Host the Ingress routes to the `hello` Service.
const HOST: &str = "hello.bench";

/// nginx's configuration: everything under `dir`, listening on `port`, proxying to
/// `upstream` with keep-alive connections.
fn nginx_config(dir: &Path, port: u16, upstream: &str) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nworker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n\
           client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           upstream pod {{ server {upstream}; keepalive 128; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
               proxy_pass http://pod;\n      proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n\
               proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
               proxy_set_header X-Forwarded-Proto $scheme;\n    }}\n  }}\n}}\n"
    )
}

/// The nginx master the benchmark started. Stopped with SIGTERM (nginx's fast
/// shutdown: the master stops its workers, then exits), SIGKILL only if it has not
/// exited within 5 s; a SIGKILLed master would leave its workers behind.
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_nginx(dir: &Path, port: u16, upstream: &str) -> Result<Nginx> {
    let config = dir.join("nginx.conf");
    std::fs::write(&config, nginx_config(dir, port, upstream))?;
    let child = std::process::Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("cannot start nginx (Debian package nginx)")?;
    Ok(Nginx(child))
}

pub async fn run(args: IngressArgs) -> Result<()> {
    let skiff = cluster::skiff_binary(args.skiff.as_deref())?;
    let (component, image) = hello_component(&args.examples)?;
    let dir = tempfile::tempdir()?;
    let (_up, client) = serving_cluster(&skiff, &dir.path().join("skiff"), &image, 1).await?;
    let ingress = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {"rules": [{"host": HOST, "http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "hello", "port": {"number": 80}}}}]}}]},
    });
    client
        .create(&skiff_api::resource::INGRESSES, Some("default"), &ingress)
        .await?;
    let pod_ip = first_pod_ip(&client, "hello").await?;
    let nginx_dir = dir.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir)?;
    let nginx_port = free_port()?;
    let _nginx = start_nginx(&nginx_dir, nginx_port, &format!("{pod_ip}:8080"))?;
    // (name, URL, Host header)
    let targets = [
        (
            "skiff Ingress",
            "http://127.0.0.1:80/".to_string(),
            Some(HOST),
        ),
        (
            "nginx -> pod IP",
            format!("http://127.0.0.1:{nginx_port}/"),
            Some(HOST),
        ),
        ("pod IP, direct", format!("http://{pod_ip}:8080/"), None),
    ];
    for (_, url, host) in &targets {
        wait_answer(url, *host, "hello from").await?;
    }
    println!(
        "Ingress to a wasi:http pod ({} KiB component, instance per request) vs nginx {} proxying to its pod IP; wrk {} s per run, {} rounds, medians",
        std::fs::metadata(&component)?.len() / 1024,
        nginx_version(),
        args.seconds,
        args.rounds
    );
    let mut runs: BTreeMap<(u32, usize), Vec<Run>> = BTreeMap::new();
    for _ in 0..args.rounds {
        for &c in &args.concurrency {
            for (i, (_, url, host)) in targets.iter().enumerate() {
                wrk(url, *host, c, 1)?; // warm-up
                runs.entry((c, i))
                    .or_default()
                    .push(wrk(url, *host, c, args.seconds)?);
            }
        }
    }
    let names: Vec<&str> = targets.iter().map(|(name, _, _)| *name).collect();
    print_medians(&names, &args.concurrency, &runs, 1, "nginx");
    println!("  target: skiff Ingress >= 1.0x nginx req/s at c=64");
    Ok(())
}

fn nginx_version() -> String {
    std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .and_then(|v| v.rsplit('/').next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_gets_keepalive_upstreams_and_paths_under_its_dir() {
        let config = nginx_config(Path::new("/tmp/x"), 8081, "10.42.0.5:8080");
        for expected in [
            "listen 127.0.0.1:8081;",
            "upstream pod { server 10.42.0.5:8080; keepalive 128; }",
            "proxy_http_version 1.1;",
            "pid /tmp/x/nginx.pid;",
            "proxy_temp_path /tmp/x/proxy;",
        ] {
            assert!(config.contains(expected), "{expected} in {config}");
        }
    }
}
