//! `promtool`, Prometheus's rule checker, for the tests of `deploy/prometheus/`: taken from
//! Debian's `prometheus` package without installing it or starting anything — `apt-get download
//! prometheus` (after `apt-get update` if apt knows no such package yet), then `dpkg-deb -x`
//! into `target/tools/prometheus/`, where later runs find it.
//!
//! Guarantees:
//! - One download per target dir: an exclusive lock on `target/tools/prometheus.lock` is held
//!   while it is checked and fetched, so tests (or test processes) racing for it wait for the
//!   first; the package is unpacked in a temporary dir and renamed into place whole, so no one
//!   sees half a tree.
//! - A failure names what was run and what it printed (no apt, no network, not root).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/tools/` (from this test's executable: `target/<profile>/deps/<test>`).
fn tools_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test runs from target/<profile>/deps");
    target.join("tools")
}

fn runs(promtool: &Path) -> bool {
    Command::new(promtool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The path of a working `promtool`, fetched on first use (see the module's doc).
pub fn promtool() -> PathBuf {
    let tools = tools_dir();
    std::fs::create_dir_all(&tools).unwrap();
    let root = tools.join("prometheus");
    let promtool = root.join("usr/bin/promtool");
    if runs(&promtool) {
        return promtool;
    }
    let lock = File::create(tools.join("prometheus.lock")).unwrap();
    lock.lock().unwrap();
    if runs(&promtool) {
        return promtool; // another test fetched it while this one waited
    }
    let work = tempfile::tempdir_in(&tools).unwrap();
    let download = || {
        run(Command::new("apt-get")
            .args(["download", "-q", "prometheus"])
            .current_dir(work.path()))
    };
    if let Err(first) = download() {
        // A fresh machine may have no package lists yet.
        if let Err(e) = run(Command::new("apt-get").args(["update", "-q"])) {
            panic!("promtool: {first}\nand then: {e}");
        }
        if let Err(e) = download() {
            panic!("promtool: {e}");
        }
    }
    let deb = std::fs::read_dir(work.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("apt-get download prometheus left a .deb");
    let unpacked = work.path().join("root");
    if let Err(e) = run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked)) {
        panic!("promtool: {e}");
    }
    // Only promtool is used: drop the server binary (50 MB).
    let _ = std::fs::remove_file(unpacked.join("usr/bin/prometheus"));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&unpacked, &root).unwrap();
    assert!(runs(&promtool), "{} does not run", promtool.display());
    promtool
}
