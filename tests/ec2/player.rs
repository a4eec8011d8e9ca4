//! The instance player: the emulator runs no instances, so the test plays them. It watches the
//! emulated account, and runs each new running instance's launch data as the instance would:
//! cloud-config's files written (under a directory of the instance's own), then the machine's
//! systemd unit run with its environment, bound to the instance's private address on loopback.
//! When the unit's process ends, the unit's power-off is played as EC2 plays it for an instance
//! whose shutdown behaviour is terminate: the instance is terminated. An instance terminated
//! from outside has its process killed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bigmachine::ec2::testing::{EmulatedInstance, Emulator};
use bigmachine::{Error, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;
use yaml_rust2::YamlLoader;

fn fail(message: impl Into<String>) -> Error {
    Error::other(message.into())
}

/// What became of one instance's machine process.
#[derive(Debug, Clone, Default)]
pub(crate) struct Played {
    pub(crate) pid: Option<u32>,
    /// Its exit code (`Some(-1)` when killed by a signal), once it ended.
    pub(crate) exit: Option<i32>,
    /// The last lines it printed.
    pub(crate) output: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct Player {
    emulator: Emulator,
    root: PathBuf,
    played: Mutex<HashMap<String, Played>>,
    stop: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `path` (absolute, as on the instance) inside the instance's directory `home`.
fn inside(home: &Path, path: &str) -> PathBuf {
    home.join(path.trim_start_matches('/'))
}

/// A file a cloud-config writes.
#[derive(Debug, Clone)]
pub(crate) struct WrittenFile {
    pub(crate) path: String,
    pub(crate) mode: u32,
    pub(crate) content: String,
}

/// An instance's launch data, read as cloud-init reads it: the files to write, and the unit it
/// starts.
#[derive(Debug, Clone)]
pub(crate) struct CloudConfig {
    pub(crate) files: Vec<WrittenFile>,
    pub(crate) unit: String,
}

/// Parses an instance's user data as cloud-init would.
pub(crate) fn cloud_config(user_data: &str) -> Result<CloudConfig> {
    if !user_data.starts_with("#cloud-config\n") {
        return Err(fail("user data is not a cloud-config"));
    }
    let docs = YamlLoader::load_from_str(user_data).map_err(Error::other)?;
    let doc = docs.first().ok_or_else(|| fail("empty cloud-config"))?;
    let mut files = Vec::new();
    for f in doc["write_files"].as_vec().into_iter().flatten() {
        let path = f["path"]
            .as_str()
            .ok_or_else(|| fail("a file without path"))?;
        let mode = f["permissions"]
            .as_str()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
            .ok_or_else(|| fail(format!("{path}: no octal permissions")))?;
        let content = f["content"].as_str().unwrap_or("");
        files.push(WrittenFile {
            path: path.to_string(),
            mode,
            content: content.to_string(),
        });
    }
    let unit = doc["runcmd"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter_map(|cmd| cmd.as_vec())
        .find(|cmd| {
            cmd.first().and_then(|c| c.as_str()) == Some("systemctl")
                && cmd.iter().any(|a| a.as_str() == Some("start"))
        })
        .and_then(|cmd| cmd.last().and_then(|u| u.as_str()).map(str::to_string))
        .ok_or_else(|| fail("the cloud-config starts no unit"))?;
    Ok(CloudConfig { files, unit })
}

impl Player {
    /// Plays the instances of `emulator`'s account, each in a directory under `root`.
    pub(crate) fn start(emulator: Emulator, root: PathBuf) -> Arc<Self> {
        let player = Arc::new(Self {
            emulator,
            root,
            played: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
        });
        let watcher = player.clone();
        tokio::spawn(async move {
            while !watcher.stop.is_cancelled() {
                if let Err(e) = watcher.step().await {
                    eprintln!("player: {e}");
                }
                tokio::select! {
                    _ = watcher.stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        player
    }

    /// Plays new running instances; kills the processes of terminated ones.
    async fn step(self: &Arc<Self>) -> Result<()> {
        for instance in self.emulator.instances().await? {
            let known = lock(&self.played).contains_key(&instance.id);
            match instance.state.as_str() {
                "running" if !known => {
                    lock(&self.played).insert(instance.id.clone(), Played::default());
                    let player = self.clone();
                    tokio::spawn(async move {
                        let id = instance.id.clone();
                        if let Err(e) = player.play(instance).await {
                            eprintln!("player: instance {id}: {e}");
                            player.ended(&id, -2, false).await;
                        }
                    });
                }
                "shutting-down" | "terminated" | "stopping" | "stopped" if known => {
                    self.kill(&instance.id);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Runs an instance's launch data.
    async fn play(self: &Arc<Self>, instance: EmulatedInstance) -> Result<()> {
        let user_data = self.emulator.user_data(&instance.id).await?;
        let config = cloud_config(&user_data)?;
        let unit_name = &config.unit;
        let home = self.root.join(&instance.id);
        let mut unit = None;
        for f in &config.files {
            let file = inside(&home, &f.path);
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&file, &f.content)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(f.mode))?;
            if f.path.ends_with(&format!("/{unit_name}")) {
                unit = Some(f.content.clone());
            }
        }
        let unit = unit.ok_or_else(|| fail(format!("no unit file for {unit_name}")))?;
        let ip: IpAddr = instance
            .private_ip
            .ok_or_else(|| fail("the instance has no private address"))?;
        let mut env = Vec::new();
        let mut exec_start = None;
        let mut powers_off = false;
        for line in unit.lines() {
            if let Some(kv) = line.strip_prefix("Environment=") {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| fail(format!("bad unit line {line:?}")))?;
                let v = v.replace("%%", "%");
                let v = if k == "BIGMACHINE_ADDR" {
                    // The instance serves on its own address (0.0.0.0 would be every instance's).
                    let port = v.rsplit_once(':').map_or("443", |(_, p)| p);
                    format!("{ip}:{port}")
                } else if v.starts_with('/') {
                    inside(&home, &v).display().to_string()
                } else {
                    v
                };
                env.push((k.to_string(), v));
            } else if let Some(cmd) = line.strip_prefix("ExecStart=") {
                exec_start = Some(inside(&home, cmd.trim()));
            } else if line.starts_with("ExecStopPost=") && line.contains("poweroff") {
                powers_off = true;
            }
        }
        let script = exec_start.ok_or_else(|| fail("the unit has no ExecStart"))?;
        let mut child = tokio::process::Command::new("sh")
            .arg(&script)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: the bootstrap's children (the machine) die with it.
            .process_group(0)
            .spawn()?;
        let id = instance.id.clone();
        lock(&self.played).entry(id.clone()).or_default().pid = child.id();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let (player, id) = (self.clone(), id.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[{id}] {line}");
                    let mut played = lock(&player.played);
                    let output = &mut played.entry(id.clone()).or_default().output;
                    output.push(line);
                    if output.len() > 50 {
                        output.remove(0);
                    }
                }
            });
        }
        let status = tokio::select! {
            status = child.wait() => status?,
            _ = self.stop.cancelled() => {
                self.kill(&id);
                let _ = child.start_kill();
                child.wait().await?
            }
        };
        self.ended(&id, status.code().unwrap_or(-1), powers_off)
            .await;
        Ok(())
    }

    /// Records how an instance's process ended; plays the unit's power-off.
    async fn ended(&self, id: &str, code: i32, powers_off: bool) {
        lock(&self.played).entry(id.to_string()).or_default().exit = Some(code);
        if powers_off && !self.stop.is_cancelled() {
            if let Err(e) = self.emulator.terminate(id).await {
                eprintln!("player: powering {id} off: {e}");
            }
        }
    }

    /// What became of the instance `id`'s machine.
    pub(crate) fn played(&self, id: &str) -> Option<Played> {
        lock(&self.played).get(id).cloned()
    }

    /// The instances played so far.
    pub(crate) fn instances(&self) -> Vec<String> {
        lock(&self.played).keys().cloned().collect()
    }

    /// How many machine processes are alive.
    pub(crate) fn alive(&self) -> usize {
        lock(&self.played)
            .values()
            .filter(|p| p.pid.is_some() && p.exit.is_none())
            .count()
    }

    /// Kills the process group of instance `id` (its instance is gone): the bootstrap and the
    /// machine it runs.
    pub(crate) fn kill(&self, id: &str) {
        let played = lock(&self.played);
        if let Some(pid) = played
            .get(id)
            .filter(|p| p.exit.is_none())
            .and_then(|p| p.pid)
        {
            // SAFETY: kill(2) has no memory-safety preconditions; the negative pid names the
            // process group the bootstrap leads.
            unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
        }
    }

    /// Stops playing: every process is killed.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
        for id in self.instances() {
            self.kill(&id);
        }
    }
}
