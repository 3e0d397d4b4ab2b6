//! Python packages the tests drive tollgate with (the official OpenAI SDK, a real LiteLLM
//! proxy), each installed by the test itself, once, into a virtualenv under the target dir named
//! after its requirements file's content (`py-<name>-<hash>`), so a fresh machine needs nothing
//! but `python3` with venv and PyPI on first run.
//!
//! Guarantees: the install is race-free (it happens in a private temporary dir that is renamed
//! into place only when complete; the first rename wins); an install that fails fails the test
//! with pip's output, never skips it; and no virtualenv is used that holds a `.pth` file other
//! than setuptools' own (`.pth` files run code at every interpreter start: that is how the
//! malicious litellm 1.82.7 and 1.82.8 uploads ran theirs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// `.pth` files a fresh virtualenv may hold (setuptools' own).
const EXPECTED_PTH: &[&str] = &["distutils-precedence.pth"];

/// One set of pinned packages.
pub struct PyEnv {
    /// A short name for the virtualenv's directory.
    pub name: &'static str,
    /// The requirements file's content (`include_str!`) and its path (for pip).
    pub requirements: &'static str,
    pub requirements_path: &'static str,
    /// The distribution whose pinned version proves the install (`openai`, `litellm`).
    pub package: &'static str,
    /// How long `pip install` may take, retries included.
    pub install_limit: Duration,
}

impl PyEnv {
    /// The pinned version of [`PyEnv::package`], from its `name==X.Y.Z` (or `name[extra]==…`)
    /// line.
    pub fn pinned_version(&self) -> &'static str {
        self.pinned(self.package)
    }

    /// The pinned version of `package` in the requirements.
    pub fn pinned(&self, package: &str) -> &'static str {
        self.requirements
            .lines()
            .find_map(|l| {
                let l = l.trim();
                let rest = l.strip_prefix(package)?;
                let rest = match rest.strip_prefix('[') {
                    Some(extras) => extras.split_once(']')?.1,
                    None => rest,
                };
                rest.strip_prefix("==")
            })
            .expect("the requirements pin the package with ==")
    }

    /// The virtualenv with the pinned packages, created and installed on first use.
    pub fn ensure(&self) -> PathBuf {
        let hash = hex::encode(Sha256::digest(self.requirements.as_bytes()));
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "py-{}-{}",
            self.name,
            &hash[..12]
        ));
        if self.works(&venv) {
            check_pth_files(&venv);
            return venv;
        }
        fs::create_dir_all(venv.parent().unwrap()).unwrap();
        if venv.exists() {
            // Broken (its Python gone, say): move it aside, then build anew.
            let aside = sibling(&venv, "broken");
            if fs::rename(&venv, &aside).is_ok() {
                let _ = fs::remove_dir_all(&aside);
            }
        }
        let tmp = sibling(&venv, "tmp");
        let logs = tempfile::tempdir().unwrap();
        let (out, err) = (logs.path().join("out"), logs.path().join("err"));
        let fail = |what: &str, result: Result<ExitStatus, String>| {
            let _ = fs::remove_dir_all(&tmp);
            panic!(
                "could not install {} for this test: {what} failed ({}).\n\
                 The test needs python3 with venv, and PyPI reachable on first run to install {}.\n\
                 --- stdout ---\n{}\n--- stderr ---\n{}",
                self.package,
                match result {
                    Ok(status) => status.to_string(),
                    Err(e) => e,
                },
                self.requirements_path,
                read_lossy(&out),
                read_lossy(&err),
            )
        };
        let result = run_limited(
            Command::new("python3").arg("-m").arg("venv").arg(&tmp),
            &out,
            &err,
            Duration::from_secs(120),
        );
        if !matches!(result, Ok(s) if s.success()) {
            fail("python3 -m venv", result);
        }
        let result = run_limited(
            Command::new(tmp.join("bin/python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--no-input",
                    "--disable-pip-version-check",
                ])
                // Per connection attempt, and how often to retry: fail within minutes, not hang.
                .args(["--timeout", "30", "--retries", "2"])
                // Bytecode is compiled on first import instead, under the venv's final path.
                .arg("--no-compile")
                .arg("-r")
                .arg(self.requirements_path),
            &out,
            &err,
            self.install_limit,
        );
        if !matches!(result, Ok(s) if s.success()) {
            fail("pip install", result);
        }
        check_pth_files(&tmp);
        fs::write(tmp.join(".complete"), self.requirements).unwrap();
        // A venv runs from wherever it lies as long as it is started by its bin/python (its
        // sys.prefix comes from pyvenv.cfg beside it); only the console scripts' shebangs name
        // the old path, so tests start those as `bin/python -m <module>`.
        if let Err(e) = fs::rename(&tmp, &venv) {
            let _ = fs::remove_dir_all(&tmp);
            assert!(
                self.works(&venv),
                "could not move the new virtualenv to {}: {e}",
                venv.display()
            );
        }
        assert!(
            self.works(&venv),
            "the new virtualenv at {} does not run",
            venv.display()
        );
        venv
    }

    /// Whether `venv` is a complete install that still runs, with the pinned package in it.
    fn works(&self, venv: &Path) -> bool {
        let python = venv.join("bin/python");
        if !venv.join(".complete").exists() || !python.exists() {
            return false;
        }
        Command::new(&python)
            .args([
                "-c",
                &format!(
                    "import importlib.metadata as m; print(m.version('{}'))",
                    self.package
                ),
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| {
                o.status.success()
                    && String::from_utf8_lossy(&o.stdout).trim() == self.pinned_version()
            })
    }
}

/// Panics if `venv`'s site-packages holds a `.pth` file beyond setuptools' own.
fn check_pth_files(venv: &Path) {
    let lib = venv.join("lib");
    let mut unexpected = Vec::new();
    for python in fs::read_dir(&lib).unwrap().flatten() {
        let site = python.path().join("site-packages");
        let Ok(entries) = fs::read_dir(&site) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".pth") && !EXPECTED_PTH.contains(&name.as_str()) {
                unexpected.push(site.join(name));
            }
        }
    }
    assert!(
        unexpected.is_empty(),
        "REFUSING TO RUN: unexpected .pth files in {} (code that runs at every Python start; \
         the malicious litellm 1.82.7/1.82.8 uploads shipped one): {unexpected:?}",
        venv.display()
    );
}

/// Runs `cmd` with stdout and stderr to files (no pipe to fill up), killed after `limit`.
pub fn run_limited(
    cmd: &mut Command,
    stdout: &Path,
    stderr: &Path,
    limit: Duration,
) -> Result<ExitStatus, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(stdout).unwrap())
        .stderr(fs::File::create(stderr).unwrap())
        .spawn()
        .map_err(|e| format!("could not start {cmd:?}: {e}"))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Ok(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd:?} still running after {limit:?}; killed"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

/// A name no other process uses, beside `dir`.
fn sibling(dir: &Path, what: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = dir.file_name().unwrap().to_string_lossy();
    dir.with_file_name(format!("{name}.{what}-{}-{nanos}", std::process::id()))
}

/// Runs `f` off the runtime, so a gateway keeps serving; its panic is the test's, as it was.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Environment variables a Python client must not inherit (proxies, SDK settings).
pub const SCRUBBED_ENV: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "OPENAI_LOG",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "PYTHONPATH",
    "PYTHONHOME",
];
