//! Crash safety: `kill -9` the control plane at random moments while writers run, and
//! prove after every restart that the store opens and every acknowledged write is there.

use crate::harness::ControlProcess;
use anyhow::{ensure, Result};
use rand::Rng;
use serde_json::{json, Value};
use skiff_client::{Client, ListOptions};
use std::collections::HashMap;
use std::time::Duration;

const WRITERS: usize = 8;
/// Each writer stops after this many writes even if the kill is late.
const MAX_WRITES_PER_WRITER: usize = 2_000;

#[derive(Default)]
struct Acknowledged {
    /// Created configmap name -> the resourceVersion the create returned.
    created: HashMap<String, u64>,
    /// Per writer: the highest counter value whose update was acknowledged.
    counters: HashMap<usize, u64>,
    max_revision: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() -> Result<()> {
    let cycles: usize = std::env::var("SKIFF_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let dir = tempfile::tempdir()?;
    let configmaps = &skiff_api::resource::CONFIG_MAPS;
    let mut acked = Acknowledged::default();
    let mut rng = rand::thread_rng();
    for cycle in 0..cycles {
        // The store must open after every crash; start() fails the test if it does not.
        let mut control = ControlProcess::start(dir.path()).await?;
        let client = control.client()?;
        verify(&client, &acked, cycle).await?;
        if cycle == 0 {
            for w in 0..WRITERS {
                let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("counter-{w}")}, "data": {"n": "0"}});
                client.create(configmaps, Some("default"), &object).await?;
                acked.counters.insert(w, 0);
            }
        }
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let client = client.clone();
            let start_counter = acked.counters[&w];
            writers.push(tokio::spawn(write_until_killed(
                client,
                cycle,
                w,
                start_counter,
            )));
        }
        // The kill lands at a random moment of the write load: this sleep is the fault
        // injection itself, not a synchronisation.
        let kill_after = Duration::from_millis(rng.gen_range(50..800));
        tokio::time::sleep(kill_after).await;
        control.kill_hard()?;
        for (w, writer) in writers.into_iter().enumerate() {
            let (created, counter) = writer.await?;
            for (name, rv) in created {
                acked.max_revision = acked.max_revision.max(rv);
                acked.created.insert(name, rv);
            }
            if let Some((n, rv)) = counter {
                acked.max_revision = acked.max_revision.max(rv);
                acked.counters.insert(w, n);
            }
        }
    }
    let control = ControlProcess::start(dir.path()).await?;
    let client = control.client()?;
    verify(&client, &acked, cycles).await?;
    ensure!(
        acked.created.len() > cycles,
        "the writers got too few writes acknowledged to prove anything"
    );
    Ok(())
}

/// Creates configmaps and bumps this writer's counter until the server goes away.
async fn write_until_killed(
    client: Client,
    cycle: usize,
    writer: usize,
    mut counter: u64,
) -> (Vec<(String, u64)>, Option<(u64, u64)>) {
    let configmaps = &skiff_api::resource::CONFIG_MAPS;
    let mut created = Vec::new();
    let mut last_counter = None;
    for i in 0..MAX_WRITES_PER_WRITER {
        let name = format!("c{cycle}-w{writer}-{i}");
        let object = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"i": i.to_string()}});
        match client.create(configmaps, Some("default"), &object).await {
            Ok(o) => created.push((name, revision_of(&o))),
            Err(_) => break,
        }
        let patch = json!({"data": {"n": (counter + 1).to_string()}});
        match client
            .patch(
                configmaps,
                Some("default"),
                &format!("counter-{writer}"),
                "application/merge-patch+json",
                &patch,
            )
            .await
        {
            Ok(o) => {
                counter += 1;
                last_counter = Some((counter, revision_of(&o)));
            }
            Err(_) => break,
        }
    }
    (created, last_counter)
}

fn revision_of(object: &Value) -> u64 {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn verify(client: &Client, acked: &Acknowledged, cycle: usize) -> Result<()> {
    let configmaps = &skiff_api::resource::CONFIG_MAPS;
    let list = client
        .list(configmaps, Some("default"), &ListOptions::default())
        .await?;
    let list_revision: u64 = list
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("0")
        .parse()?;
    ensure!(
        list_revision >= acked.max_revision,
        "cycle {cycle}: the store's revision went back from {} to {list_revision}",
        acked.max_revision
    );
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let present: HashMap<String, &Value> = items
        .iter()
        .filter_map(|o| Some((o.pointer("/metadata/name")?.as_str()?.to_string(), o)))
        .collect();
    for name in acked.created.keys() {
        ensure!(
            present.contains_key(name),
            "cycle {cycle}: acknowledged create of {name} was lost"
        );
    }
    for (writer, n) in &acked.counters {
        let stored: u64 = present
            .get(&format!("counter-{writer}"))
            .and_then(|o| o.pointer("/data/n"))
            .and_then(Value::as_str)
            .unwrap_or("0")
            .parse()?;
        // A write that got no answer may or may not have landed; an acknowledged one must have.
        ensure!(
            stored >= *n,
            "cycle {cycle}: counter-{writer} is {stored}, but {n} was acknowledged"
        );
    }
    Ok(())
}
