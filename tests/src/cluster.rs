//! A PostgreSQL cluster of the test's own (`initdb` + `pg_ctl` on a free port, in a temp dir), for
//! tests that restart or crash PostgreSQL — never the machine's shared one, which other tests
//! use. Stopped (immediately) and deleted on drop.
//!
//! The binaries are found in `TOLLGATE_PG_BIN` or the newest `/usr/lib/postgresql/*/bin`.
//! PostgreSQL refuses to run as root: when the test runs as root, the cluster runs as the
//! `postgres` system user (its data dir is given to that user).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A running cluster with one database, `tollgate`.
#[derive(Debug)]
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    pub port: u16,
}

fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("TOLLGATE_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's binaries in /usr/lib/postgresql (or set TOLLGATE_PG_BIN)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

/// (uid, gid) of the `postgres` user when running as root; `None` otherwise.
fn owner() -> Option<(u32, u32)> {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").arg(flag).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    if id("-u") != 0 {
        return None;
    }
    let ids = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "running as root needs a `postgres` user for initdb"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    Some((ids("-u"), ids("-g")))
}

impl PgCluster {
    /// initdb, start on a free port, create database `tollgate`.
    pub fn start() -> PgCluster {
        let dir = tempfile::tempdir().unwrap();
        let owner = owner();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = PgCluster {
            dir,
            bin: pg_bin(),
            owner,
            port,
        };
        cluster.ok(Command::new(cluster.bin.join("initdb")).args([
            "-D",
            &cluster.data().to_string_lossy(),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]));
        cluster.pg_ctl(&["start", "-w", "-t", "60"]);
        cluster.ok(Command::new(cluster.bin.join("createdb")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "tollgate",
        ]));
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The URL of database `tollgate`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/tollgate", self.port)
    }

    /// Crashes PostgreSQL (`-m immediate`: no checkpoint, recovery on start) and starts it
    /// again, waiting until it accepts connections.
    pub fn crash_and_restart(&self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "60"]);
        self.pg_ctl(&["start", "-w", "-t", "60"]);
    }

    fn pg_ctl(&self, args: &[&str]) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.args(["-D", &self.data().to_string_lossy(), "-o", &options, "-l"])
            .arg(&log)
            .args(args);
        self.ok(&mut cmd);
    }

    fn ok(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(self.dir.path());
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}{}\nlog: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
        );
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.args([
            "-D",
            &self.data().to_string_lossy(),
            "stop",
            "-m",
            "immediate",
            "-w",
        ]);
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        let _ = cmd.current_dir(self.dir.path()).output();
    }
}
