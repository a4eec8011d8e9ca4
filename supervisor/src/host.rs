//! What a machine reports about its host: memory, disk, load.

use std::path::Path;

use bigmachine_core::{DiskInfo, Error, Kind, LoadInfo, MemInfo, Result};
use sysinfo::{Disks, ProcessRefreshKind, ProcessesToUpdate, System};

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(Kind::NotSupported, format!("{what}: {e}"))
}

/// Memory of the host and of this process.
pub(crate) fn mem_info() -> Result<MemInfo> {
    let mut sys = System::new().map_err(|e| unavailable("system information", e))?;
    sys.refresh_memory();
    let pid = sysinfo::get_current_pid().map_err(|e| unavailable("pid", e))?;
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        true,
        ProcessRefreshKind::nothing().with_memory(),
    );
    Ok(MemInfo {
        total: sys.total_memory(),
        available: sys.available_memory(),
        process_rss: sys.process(pid).map_or(0, |p| p.memory()),
    })
}

/// Space on the file system that holds `dir`.
pub(crate) fn disk_info(dir: &Path) -> Result<DiskInfo> {
    let disks = Disks::new_with_refreshed_list().map_err(|e| unavailable("disks", e))?;
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    disks
        .iter()
        .filter(|d| dir.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| DiskInfo {
            total: d.total_space(),
            available: d.available_space(),
        })
        .ok_or_else(|| unavailable("disk", format!("no file system holds {}", dir.display())))
}

/// Load averages of the host.
pub(crate) fn load_info() -> Result<LoadInfo> {
    let load = System::load_average().map_err(|e| unavailable("load average", e))?;
    Ok(LoadInfo {
        one: load.one,
        five: load.five,
        fifteen: load.fifteen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_figures_are_plausible() -> Result<()> {
        let mem = mem_info()?;
        assert!(mem.total > 0 && mem.available <= mem.total);
        assert!(mem.process_rss > 0);
        let disk = disk_info(&std::env::temp_dir())?;
        assert!(disk.total > 0 && disk.available <= disk.total);
        assert!(load_info()?.one >= 0.0);
        Ok(())
    }
}
