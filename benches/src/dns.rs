//! `skiff-bench dns`: in-zone A queries per second and latency, `dnsperf` against the
//! DNS add-on of `skiff up` (on the cluster DNS address) and against `dnsmasq` serving
//! the same names and addresses from a hosts file, same run, same query file, same
//! dnsperf settings, each server given the same CPUs. Also the time from a Service's
//! creation (the API's answer) to its name answering on the add-on.

use crate::cluster::{self, free_port, spawn, Started};
use anyhow::{ensure, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct DnsArgs {
    #[arg(long)]
    skiff: Option<PathBuf>,
    /// Services in the zone (and names in dnsmasq's hosts file).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Seconds of load per server and round.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// dnsperf's concurrent clients (sockets).
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// Outstanding queries dnsperf keeps.
    #[arg(long, default_value_t = 100)]
    outstanding: u32,
    /// Alternating rounds per server (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Service-to-answer samples.
    #[arg(long, default_value_t = 30)]
    propagation_samples: usize,
}

const CLUSTER_DNS: &str = "10.43.0.10";
/// dnsmasq's address in the benchmark's namespace.
const DNSMASQ: &str = "127.0.0.3";

#[derive(Debug, Clone, Copy)]
struct Perf {
    qps: f64,
    avg_latency_ms: f64,
    lost_percent: f64,
    completed: f64,
    /// CPU time the server process spent per answered query, in microseconds.
    server_cpu_us: f64,
}

fn parse_dnsperf(output: &str) -> Result<Perf> {
    let number = |key: &str| -> Result<f64> {
        let line = output
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .with_context(|| format!("dnsperf printed no {key:?}:\n{output}"))?;
        let value = line
            .split(':')
            .nth(1)
            .context("value")?
            .split_whitespace()
            .next()
            .context("number")?;
        Ok(value.parse()?)
    };
    let lost = output
        .lines()
        .find(|l| l.trim_start().starts_with("Queries lost"))
        .and_then(|l| l.split('(').nth(1))
        .and_then(|l| l.split('%').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0.0);
    Ok(Perf {
        qps: number("Queries per second")?,
        avg_latency_ms: number("Average Latency (s)")? * 1000.0,
        lost_percent: lost,
        completed: number("Queries completed")?,
        server_cpu_us: 0.0,
    })
}

/// User plus system CPU seconds `pid` has used (all its threads), from /proc.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("/proc stat format")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields.get(i).context("/proc stat field")?.parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// dnsperf against `server` (served by process `pid`), with the server's CPU time per
/// answered query.
fn measure(
    server: &str,
    pid: u32,
    queries: &Path,
    args: &DnsArgs,
    cpu: Option<&str>,
) -> Result<Perf> {
    let before = cpu_seconds(pid)?;
    let mut perf = dnsperf(server, queries, args, cpu)?;
    let used = cpu_seconds(pid)? - before;
    perf.server_cpu_us = used * 1e6 / perf.completed.max(1.0);
    Ok(perf)
}

fn dnsperf(server: &str, queries: &Path, args: &DnsArgs, cpu: Option<&str>) -> Result<Perf> {
    let mut command = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpu, "dnsperf"]);
            c
        }
        None => Command::new("dnsperf"),
    };
    let output = command
        .args(["-s", server, "-d"])
        .arg(queries)
        .args(["-l", &args.seconds.to_string()])
        .args(["-c", &args.clients.to_string()])
        .args(["-q", &args.outstanding.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("running dnsperf (scripts/setup.sh --bench installs it)")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "dnsperf failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse_dnsperf(&text)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// dig's short answer for `name` on `server`.
fn dig(server: &str, name: &str) -> Result<String> {
    let output = Command::new("dig")
        .args([
            &format!("@{server}"),
            name,
            "A",
            "+short",
            "+time=1",
            "+tries=1",
        ])
        .stdin(Stdio::null())
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

async fn propagation(client: &skiff_client::Client, samples: usize) -> Result<Vec<Duration>> {
    let mut seen = Vec::new();
    for i in 0..samples {
        let name = format!("fresh-{i}");
        let service = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"port": 80}]}});
        let created = client
            .create(&skiff_api::resource::SERVICES, Some("default"), &service)
            .await?;
        let started = Instant::now();
        let ip = created["spec"]["clusterIP"]
            .as_str()
            .context("clusterIP")?
            .to_string();
        let fqdn = format!("{name}.default.svc.cluster.local");
        let deadline = started + Duration::from_secs(10);
        loop {
            if dig(CLUSTER_DNS, &fqdn)? == ip {
                seen.push(started.elapsed());
                break;
            }
            ensure!(Instant::now() < deadline, "{fqdn} never answered");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    seen.sort();
    Ok(seen)
}

/// Pins `pid` (and its threads) to `cpus`, so both servers get the same share.
fn pin(pid: u32, cpus: &str) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status()?;
    ensure!(status.success(), "taskset failed");
    Ok(())
}

pub async fn run(args: DnsArgs) -> Result<()> {
    let skiff = cluster::skiff_binary(args.skiff.as_deref())?;
    let dir = tempfile::tempdir()?;
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "")?;
    let port = free_port()?;
    // dnsmasq is single-threaded; the add-on gets the same one CPU, dnsperf the other.
    // skiff starts on its CPU, so it sizes itself for one (one UDP socket, one worker
    // thread) as it would on a one-CPU machine.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = cpus >= 2;
    let mut command: Vec<String> = Vec::new();
    if pinned {
        command.extend(["-c".into(), "0".into(), skiff.display().to_string()]);
    }
    let launcher = if pinned {
        Path::new("taskset")
    } else {
        skiff.as_path()
    };
    command.extend([
        "up".into(),
        "--data-dir".into(),
        dir.path().join("up").display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--no-example".into(),
        "--resolv-conf".into(),
        resolv.display().to_string(),
    ]);
    let up: Started = spawn(launcher, &command)?;
    let client = cluster::admin_client(&dir.path().join("up")).await?;
    cluster::wait_for_ready_node(&client).await?;

    // The names: one ClusterIP Service each, and the same names and addresses for
    // dnsmasq's hosts file.
    let mut hosts = String::new();
    let mut queries = String::new();
    for i in 0..args.services {
        let name = format!("svc-{i}");
        let service = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"port": 80}]}});
        let created = client
            .create(&skiff_api::resource::SERVICES, Some("default"), &service)
            .await?;
        let ip = created["spec"]["clusterIP"].as_str().context("clusterIP")?;
        let fqdn = format!("{name}.default.svc.cluster.local");
        hosts.push_str(&format!("{ip} {fqdn}\n"));
        queries.push_str(&format!("{fqdn} A\n"));
    }
    let hosts_file = dir.path().join("hosts");
    let query_file = dir.path().join("queries");
    std::fs::write(&hosts_file, &hosts)?;
    std::fs::write(&query_file, &queries)?;
    let last = format!("svc-{}.default.svc.cluster.local", args.services - 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while dig(CLUSTER_DNS, &last)?.is_empty() {
        ensure!(
            Instant::now() < deadline,
            "the add-on never answered {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let dnsmasq = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={DNSMASQ}"),
            "--port=53",
            "--user=root",
            "--cache-size=10000",
            // Hosts-file answers with the add-on's TTL.
            "--local-ttl=5",
        ])
        .arg(format!("--addn-hosts={}", hosts_file.display()))
        .arg(format!(
            "--pid-file={}",
            dir.path().join("dnsmasq.pid").display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting dnsmasq (scripts/setup.sh installs dnsmasq-base)")?;
    let dnsmasq = Started(dnsmasq);
    let deadline = Instant::now() + Duration::from_secs(10);
    while dig(DNSMASQ, &last)?.is_empty() {
        ensure!(Instant::now() < deadline, "dnsmasq never answered {last}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if pinned {
        pin(dnsmasq.0.id(), "0")?;
    }

    let (mut skiff_runs, mut dnsmasq_runs) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        let load_cpu = pinned.then_some("1");
        skiff_runs.push(measure(
            CLUSTER_DNS,
            up.0.id(),
            &query_file,
            &args,
            load_cpu,
        )?);
        dnsmasq_runs.push(measure(
            DNSMASQ,
            dnsmasq.0.id(),
            &query_file,
            &args,
            load_cpu,
        )?);
    }
    let seen = propagation(&client, args.propagation_samples).await?;

    let summary = |runs: &[Perf]| {
        (
            median(runs.iter().map(|p| p.qps).collect()),
            median(runs.iter().map(|p| p.avg_latency_ms).collect()),
            runs.iter().map(|p| p.lost_percent).fold(0.0, f64::max),
            median(runs.iter().map(|p| p.server_cpu_us).collect()),
        )
    };
    let (s_qps, s_lat, s_lost, s_cpu) = summary(&skiff_runs);
    let (d_qps, d_lat, d_lost, d_cpu) = summary(&dnsmasq_runs);
    println!(
        "dns: {} in-zone A names, dnsperf -c {} -q {} for {} s x {} rounds per server{}",
        args.services,
        args.clients,
        args.outstanding,
        args.seconds,
        args.rounds,
        if pinned {
            ", each server pinned to CPU 0 and dnsperf to CPU 1"
        } else {
            ""
        }
    );
    println!("  skiff dns-addon : {s_qps:>10.0} q/s  avg {s_lat:.3} ms  lost ≤{s_lost:.2}%  server CPU {s_cpu:.2} us/query (whole skiff up process)");
    println!("  dnsmasq         : {d_qps:>10.0} q/s  avg {d_lat:.3} ms  lost ≤{d_lost:.2}%  server CPU {d_cpu:.2} us/query");
    println!(
        "  ratio (skiff/dnsmasq): {:.3}x q/s, {:.2}x avg latency, {:.2}x CPU per query",
        s_qps / d_qps,
        s_lat / d_lat,
        s_cpu / d_cpu.max(f64::MIN_POSITIVE)
    );
    println!(
        "  Service created -> name answering: p50 {:?} p99 {:?} (n={})",
        cluster::percentile(&seen, 50.0),
        cluster::percentile(&seen, 99.0),
        seen.len()
    );
    drop(dnsmasq);
    drop(up);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn dnsperf_output_is_read() {
        let text = "Statistics:\n\n  Queries sent:         1000\n  Queries completed:    990 (99.00%)\n  Queries lost:         10 (1.00%)\n\n  Queries per second:   123456.789012\n\n  Average Latency (s):  0.000812 (min 0.000010, max 0.010000)\n";
        let perf = super::parse_dnsperf(text).unwrap();
        assert!((perf.qps - 123456.789012).abs() < 1e-6);
        assert!((perf.avg_latency_ms - 0.812).abs() < 1e-9);
        assert!((perf.lost_percent - 1.0).abs() < 1e-9);
        assert_eq!(perf.completed, 990.0);
    }
}
