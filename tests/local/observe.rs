//! Watching a cluster of real processes: one CPU profile of every machine, merged.

use std::collections::HashMap;

use bigmachine::local::LocalSystem;
use bigmachine::{Error, Result, Services, B};

use crate::common::http_get_bytes;
use crate::support::{check, running, short_keepalive, tests, Probe, ProbeClient, Test};

pub(crate) fn tests() -> Vec<(&'static str, Test)> {
    tests![merged_cpu_profile_has_every_machine]
}

/// The function a profile's location names (its first line's).
fn function_name(p: &bigmachine::profile::protos::Profile, location: u64) -> Option<&str> {
    let l = p.location.iter().find(|l| l.id == location)?;
    let function = l.line.first()?.function_id;
    let f = p.function.iter().find(|f| f.id == function)?;
    p.string_table
        .get(usize::try_from(f.name).ok()?)
        .map(String::as_str)
}

async fn merged_cpu_profile_has_every_machine() -> Result<()> {
    let b = B::new(
        LocalSystem::builder()
            .keepalive(short_keepalive())
            .maxprocs(1)
            .build(),
    )?;
    let machines = running(&b, 3, Services::new().with("Probe", Probe)).await?;
    let addr = bigmachine::debug::serve(b.clone(), "127.0.0.1:0".parse().map_err(Error::other)?)?;
    // Every machine samples for 4 s while a profile of 2 s is taken.
    let load = futures::future::try_join_all(
        machines
            .iter()
            .map(|m| async move { ProbeClient::new(m, "Probe").pi(&4000).await }),
    );
    let profile = tokio::task::spawn_blocking(move || {
        http_get_bytes(addr, "/debug/bigmachine/pprof/profile?seconds=2")
    });
    let (inside, profile) = tokio::join!(load, profile);
    check(inside?.iter().all(|n| *n > 0), "every machine sampled")?;
    let (status, body) = profile.map_err(Error::other)?.map_err(Error::other)?;
    check(
        status.contains("200"),
        format!("{status}: {}", String::from_utf8_lossy(&body)),
    )?;
    check(
        body.starts_with(&[0x1f, 0x8b]),
        "the profile is gzip-compressed",
    )?;
    let p = bigmachine::profile::decode(&body)?;
    let text = |i: i64| {
        p.string_table
            .get(i as usize)
            .map(String::as_str)
            .unwrap_or("")
    };
    // Samples of the sampling function, by machine; self samples by function over all.
    let mut sampling: HashMap<&str, i64> = HashMap::new();
    let mut top: HashMap<&str, i64> = HashMap::new();
    for s in &p.sample {
        let machine = s
            .label
            .iter()
            .find(|l| text(l.key) == "machine")
            .map(|l| text(l.str))
            .unwrap_or("");
        let count = s.value.first().copied().unwrap_or(0);
        let names: Vec<&str> = s
            .location_id
            .iter()
            .filter_map(|id| function_name(&p, *id))
            .collect();
        if names.iter().any(|n| n.contains("sample_pi_for_profile")) {
            *sampling.entry(machine).or_default() += count;
        }
        if let Some(leaf) = names.first() {
            *top.entry(leaf).or_default() += count;
        }
    }
    let mut top: Vec<_> = top.into_iter().collect();
    top.sort_by_key(|t| std::cmp::Reverse(t.1));
    println!(
        "merged profile: {} samples, {} functions, {} locations; sampling function by machine: {sampling:?}; top self: {:?}",
        p.sample.len(),
        p.function.len(),
        p.location.len(),
        &top[..top.len().min(5)]
    );
    for m in &machines {
        let machine = m.addr().to_string();
        check(
            sampling.get(machine.as_str()).is_some_and(|n| *n > 0),
            format!("samples of sample_pi_for_profile labelled {machine}: {sampling:?}"),
        )?;
    }
    let strings = p.string_table.len();
    let unique: std::collections::HashSet<&String> = p.string_table.iter().collect();
    check(
        unique.len() == strings,
        "one string table, each string once",
    )?;
    b.shutdown().await;
    Ok(())
}
