//! Helpers for driving the real `tollgate` binary against a temporary data dir.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// A data dir in a temp dir, initialised, and a way to run the binary against it.
pub struct Agent {
    dir: tempfile::TempDir,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_tollgate")
}

impl Agent {
    /// `tollgate init` in a fresh temp dir.
    pub fn init() -> Agent {
        let agent = Agent {
            dir: tempfile::tempdir().unwrap(),
        };
        agent.ok(&["init"]);
        agent
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A command ready to run against this data dir, with no inherited tollgate env.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary());
        cmd.arg("--data-dir")
            .arg(self.dir.path())
            .args(args)
            .env_remove("TOLLGATE_MASTER_KEY")
            .env_remove("TOLLGATE_NEW_MASTER_KEY")
            .env_remove("TOLLGATE_DATA_DIR")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tollgate {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs with `--json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut with_json = vec!["--json"];
        with_json.extend_from_slice(args);
        serde_json::from_str(&self.ok(&with_json)).unwrap()
    }

    /// `tollgate verify --json`, asserting it is clean.
    pub fn assert_verified(&self) -> Value {
        let out = self.run(&["--json", "verify"]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(out.status.success(), "verify failed: {report:#}");
        assert_eq!(report["violations"], serde_json::json!([]));
        report
    }

    pub fn balance(&self, user: &str) -> String {
        self.json(&["credits", "balance", user])["balance"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// Starts `cmd` with its output piped and `input` written to its stdin, which is then closed.
/// (Inputs here are small: they fit the pipe before the child has to be read.)
pub fn spawn_with_stdin(mut cmd: Command, input: &[u8]) -> Child {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child
}
