//! Machines that must run another binary: uploaded from the driver, found in a store, or
//! fetched from a peer.

use std::time::Duration;

use bigmachine::binary::{current_digest, digest_bytes};
use bigmachine::local::LocalSystem;
use bigmachine::testsystem::{LinkFaults, Relayed};
use bigmachine::{BootTimeouts, ByteStream, Error, Kind, Params, Result, Services, State, B};

use crate::support::{check, running, short_keepalive, tests, Probe, Test};

pub(crate) fn tests() -> Vec<(&'static str, Test)> {
    tests![
        other_binary_is_uploaded_and_executed,
        binaries_come_from_the_store_or_a_peer,
        machines_booted_together_fetch_the_binary_from_each_other,
        a_binary_that_cannot_arrive_in_time_stops_its_machine_at_the_binary_bound,
        a_planted_binary_store_is_refused,
        the_binary_executed_is_the_one_checked,
    ]
}

async fn other_binary_is_uploaded_and_executed() -> Result<()> {
    // A copy of this binary with one more byte: another digest, same program.
    let exe = std::env::current_exe()?;
    let copy = std::env::temp_dir().join(format!("bigmachine-upload-test-{}", std::process::id()));
    let mut bytes = std::fs::read(&exe)?;
    bytes.push(0);
    std::fs::write(&copy, &bytes)?;
    let expected = digest_bytes(&bytes);
    let result = async {
        let b = B::new(LocalSystem::builder().keepalive(short_keepalive()).build())?;
        let params = Params::new()
            .services(Services::new().with("Probe", Probe))
            .binary(&copy);
        let machines = running(&b, 1, params).await?;
        let info = machines[0].info().await?;
        check(
            info.digest == expected,
            format!("machine runs {}, not the upload", info.digest),
        )?;
        check(
            info.digest != current_digest()?,
            "the upload has the driver's digest",
        )?;
        let reply: String = machines[0]
            .call("Probe.echo", &"after exec".to_string())
            .await?;
        check(reply == "after exec", "echo after exec")?;
        b.shutdown().await;
        Ok(())
    }
    .await;
    let _ = std::fs::remove_file(&copy);
    result
}

/// A binary no machine has seen (this one with random bytes appended), written to `copy` in a
/// directory of its own (`dir`, the caller removes it).
struct Unseen {
    dir: std::path::PathBuf,
    copy: std::path::PathBuf,
    digest: String,
    size: u64,
}

fn unseen_binary(test: &str) -> Result<Unseen> {
    let mut bytes = std::fs::read(std::env::current_exe()?)?;
    bytes.extend((0..16).map(|_| fastrand::u8(..)));
    let digest = digest_bytes(&bytes);
    let dir = std::env::temp_dir().join(format!("bigmachine-{test}-test-{}", &digest[..16]));
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join("binary");
    std::fs::write(&copy, &bytes)?;
    Ok(Unseen {
        dir,
        copy,
        digest,
        size: bytes.len() as u64,
    })
}

async fn binaries_come_from_the_store_or_a_peer() -> Result<()> {
    let Unseen {
        dir,
        copy,
        digest,
        size,
    } = unseen_binary("dist")?;
    let params = || {
        Params::new()
            .services(Services::new().with("Probe", Probe))
            .binary(&copy)
    };
    let result = async {
        // One host, one store: the second machine finds the binary there.
        let b = B::new(LocalSystem::builder().keepalive(short_keepalive()).build())?;
        running(&b, 1, params()).await?;
        check(
            b.binary_bytes_uploaded() == size,
            "first boot uploads the binary",
        )?;
        let second = running(&b, 1, params()).await?;
        check(
            second[0].info().await?.digest == digest,
            "second machine runs the binary",
        )?;
        check(
            b.binary_bytes_uploaded() == size,
            format!(
                "repeat boot uploaded {} bytes more",
                b.binary_bytes_uploaded() - size
            ),
        )?;
        b.shutdown().await;

        // A store per machine, as on separate hosts: the second fetches from the first.
        let system = LocalSystem::builder()
            .keepalive(short_keepalive())
            .isolated_stores(dir.join("stores"))
            .build();
        let b = B::new(system)?;
        running(&b, 1, params()).await?;
        check(
            b.binary_bytes_uploaded() == size,
            "first boot uploads the binary",
        )?;
        let second = running(&b, 1, params()).await?;
        check(
            second[0].info().await?.digest == digest,
            "fetched binary runs",
        )?;
        check(
            b.binary_bytes_uploaded() == size,
            "the second machine took the binary from the driver, not its peer",
        )?;
        b.shutdown().await;
        Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Eight machines started at once, each with a store of its own (as on eight hosts), all needing
/// a binary none has: the driver uploads it once, or nearly, and the rest fetch it from peers.
async fn machines_booted_together_fetch_the_binary_from_each_other() -> Result<()> {
    let Unseen {
        dir,
        copy,
        digest,
        size,
    } = unseen_binary("fanout")?;
    let result = async {
        // Eight processes on a small host hash and re-execute at once: room to do it.
        let mut keepalive = short_keepalive();
        keepalive.timeout = Duration::from_secs(20);
        keepalive.rpc_timeout = Duration::from_secs(5);
        let system = LocalSystem::builder()
            .keepalive(keepalive)
            .maxprocs(1)
            .isolated_stores(dir.join("stores"))
            .build();
        let b = B::new(system)?;
        let params = Params::new()
            .services(Services::new().with("Probe", Probe))
            .binary(&copy);
        let machines = running(&b, 8, params).await?;
        for m in &machines {
            check(
                m.info().await?.digest == digest,
                "a machine runs another binary",
            )?;
        }
        let uploads = b.binary_bytes_uploaded() / size;
        println!("    start(8) with isolated stores: {uploads} upload(s) from the driver");
        check(
            uploads <= 2,
            format!("the driver uploaded the binary {uploads} times for 8 machines"),
        )?;
        b.shutdown().await;
        Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Starts one machine of `b` that must run `binary`; returns it once its boot ended, Running
/// or Stopped (20 s at most).
async fn boot_outcome(b: &B, binary: &std::path::Path) -> Result<bigmachine::Machine> {
    let params = Params::new()
        .services(Services::new().with("Probe", Probe))
        .binary(binary);
    let machines = b.start(1, params).await?;
    let m = machines
        .into_iter()
        .next()
        .ok_or_else(|| Error::other("no machine"))?;
    tokio::time::timeout(Duration::from_secs(20), m.wait(State::Running))
        .await
        .map_err(|_| Error::other("boot neither finished nor failed in 20 s"))?;
    Ok(m)
}

async fn a_binary_that_cannot_arrive_in_time_stops_its_machine_at_the_binary_bound() -> Result<()> {
    // Tens of MiB to upload through a link with 200 ms of round trip, within 500 ms: impossible.
    let unseen = unseen_binary("bound")?;
    let result = async {
        let slow = LinkFaults::default().delay(Duration::from_millis(100));
        let system = Relayed::new(
            LocalSystem::builder().keepalive(short_keepalive()).build(),
            slow,
            7,
        );
        let mut timeouts = BootTimeouts::default();
        timeouts.binary = Duration::from_millis(500);
        let b = B::builder(system).boot_timeouts(timeouts).driver()?;
        let m = &boot_outcome(&b, &unseen.copy).await?;
        check(
            m.state() == State::Stopped,
            format!("a binary in flight left the machine {:?}", m.state()),
        )?;
        let err = m.err().ok_or_else(|| Error::other("no error"))?;
        check(
            err.is(Kind::DeadlineExceeded)
                && err.to_string().contains("getting the binary onto it"),
            format!("the machine stopped with {err}"),
        )?;
        check(
            b.binary_bytes_uploaded() == 0,
            "the upload finished within its bound",
        )?;
        b.shutdown().await;
        Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&unseen.dir);
    result
}

async fn a_planted_binary_store_is_refused() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let unseen = unseen_binary("planted")?;
    // Stores as another user could have left them: open to the group and others, and (when
    // this test may chown) private but owned by someone else.
    let open = unseen.dir.join("open-store");
    std::fs::create_dir_all(&open)?;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777))?;
    let mut stores = vec![(open, "open to other users")];
    let foreign = unseen.dir.join("foreign-store");
    std::fs::create_dir_all(&foreign)?;
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700))?;
    if std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).is_ok() {
        stores.push((foreign, "is owned by uid 65534"));
    } else {
        eprintln!("not allowed to chown: the foreign-owner case is not run");
    }
    let result = async {
        for (store, why) in stores {
            let system = LocalSystem::builder()
                .keepalive(short_keepalive())
                .env("BIGMACHINE_BINARY_STORE", store.display().to_string())
                .build();
            let b = B::new(system)?;
            let m = &boot_outcome(&b, &unseen.copy).await?;
            let err = m
                .err()
                .ok_or_else(|| Error::other("a machine booted on a planted store"))?;
            check(
                err.is(Kind::Precondition) && err.to_string().contains(why),
                format!("the machine stopped with {err}, not a refusal of the store ({why})"),
            )?;
            // Nothing was put in the store (so nothing of it can have been run).
            let held = std::fs::read_dir(&store)?.count();
            check(held == 0, format!("the refused store holds {held} files"))?;
            b.shutdown().await;
        }
        Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&unseen.dir);
    result
}

async fn the_binary_executed_is_the_one_checked() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let checked = unseen_binary("checked")?;
    let swapped = unseen_binary("swapped")?;
    let result = async {
        let stores = checked.dir.join("stores");
        let system = LocalSystem::builder()
            .keepalive(short_keepalive())
            .isolated_stores(&stores)
            .build();
        let b = B::new(system)?;
        let machines = running(&b, 1, Services::new().with("Probe", Probe)).await?;
        let m = &machines[0];
        let before = m.info().await?;
        // The driver hands the machine a binary, which it checks and keeps for its next exec.
        let copy = checked.copy.clone();
        let (): () = m
            .call("Supervisor.setbinary", &checked.digest)
            .body(move || ByteStream::from_file(copy.clone()))
            .await?;
        // Then another binary takes its name in the store, before the exec.
        let kept = stores.join("machine-0").join(&checked.digest);
        check(kept.exists(), format!("{} was not stored", kept.display()))?;
        let planted = kept.with_extension("planted");
        std::fs::copy(&swapped.copy, &planted)?;
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&planted, &kept)?;
        let (): () = m.call("Supervisor.exec", &()).await?;
        // The machine comes back (same address) running what was checked.
        let mut after = None;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(info) = m.info().await {
                if info.incarnation != before.incarnation {
                    after = Some(info);
                    break;
                }
            }
        }
        let after = after.ok_or_else(|| Error::other("the machine did not come back in 10 s"))?;
        check(
            after.digest == checked.digest,
            format!(
                "the machine runs {}, not the binary checked ({}; the swapped one is {})",
                after.digest, checked.digest, swapped.digest
            ),
        )?;
        b.shutdown().await;
        Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&checked.dir);
    let _ = std::fs::remove_dir_all(&swapped.dir);
    result
}
