//! What a packager ships besides the binaries, checked against the binaries just built: the
//! shell completions (`completions bash|zsh|fish`: non-empty, naming every subcommand; bash's
//! parsed by `bash -n`), the man pages (`man`: roff with a title header, one page per
//! subcommand with `--out-dir`, rendered by `man -l`), and the systemd units in
//! `deploy/systemd/` (`systemd-analyze verify` with no warning at all — an unknown key or a bad
//! value is only a warning there, so any output fails — its `Documentation=` pages resolved
//! against the generated man pages, and `systemd-analyze security` below an exposure of 2.0).
//!
//! `systemd-analyze`, `bash` and `man` are needed (Debian: systemd, bash, man-db); a missing one
//! fails the test, naming it, rather than skipping the check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tollgate_e2e::binary;

/// Each binary's subcommands, as its completions and man pages must name them.
const AGENT_COMMANDS: &[&str] = &[
    "init",
    "demo",
    "users",
    "credits",
    "packages",
    "power-levels",
    "keys",
    "verify",
    "serve",
    "prices",
    "usage",
    "enroll",
    "sync",
    "completions",
    "man",
];
const SERVER_COMMANDS: &[&str] = &[
    "serve",
    "migrate",
    "agents",
    "admin-tokens",
    "users",
    "credits",
    "packages",
    "power-levels",
    "reconcile",
    "completions",
    "man",
];
const BINARIES: [(&str, &[&str]); 2] = [
    ("tollgate", AGENT_COMMANDS),
    ("tollgate-server", SERVER_COMMANDS),
];

/// The highest `systemd-analyze security` exposure a unit may have (0 = fully sandboxed, 10 =
/// nothing; the command's threshold counts tenths).
const EXPOSURE_MAX_TENTHS: u32 = 20;

fn output(cmd: &mut Command, what: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{what} could not run ({e}): is it installed?"))
}

fn stdout_of(name: &str, args: &[&str]) -> String {
    let out = output(Command::new(binary(name)).args(args), name);
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_name_every_subcommand_and_bash_parses_its_script() {
    let dir = tempfile::tempdir().unwrap();
    for (name, commands) in BINARIES {
        for shell in ["bash", "zsh", "fish"] {
            let script = stdout_of(name, &["completions", shell]);
            assert!(script.len() > 1_000, "{name} {shell}: {script:?}");
            for command in commands {
                assert!(
                    script.contains(command),
                    "{name}'s {shell} completions do not name {command}"
                );
            }
            // Flags of a subcommand are completed too.
            assert!(script.contains("data-dir") || script.contains("database-url"));
            let header = match shell {
                "bash" => format!("complete -F _{}", name.replace('-', "__")),
                "zsh" => format!("#compdef {name}"),
                _ => format!("complete -c {name}"),
            };
            assert!(script.contains(&header), "{name} {shell}: no {header:?}");
        }
        let path = dir.path().join(format!("{name}.bash"));
        std::fs::write(&path, stdout_of(name, &["completions", "bash"])).unwrap();
        let parsed = output(Command::new("bash").arg("-n").arg(&path), "bash");
        assert!(
            parsed.status.success(),
            "bash -n {name}'s completions: {}",
            String::from_utf8_lossy(&parsed.stderr)
        );
        // And sourcing it registers the completion.
        let registered = output(
            Command::new("bash")
                .arg("-c")
                .arg(format!("source {} && complete -p {name}", path.display())),
            "bash",
        );
        assert!(
            String::from_utf8_lossy(&registered.stdout).contains(name),
            "{registered:?}"
        );
    }
    // An unknown shell is refused, naming the choices.
    let out = output(
        Command::new(binary("tollgate")).args(["completions", "tcsh"]),
        "tollgate",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bash"));
}

#[test]
fn man_pages_have_a_page_per_subcommand_and_render() {
    for (name, commands) in BINARIES {
        let page = stdout_of(name, &["man"]);
        assert!(page.contains(&format!(".TH {name} 1")), "{page}");
        let dir = tempfile::tempdir().unwrap();
        let listed = stdout_of(
            name,
            &[
                "man",
                "--out-dir",
                dir.path().join("man1").to_str().unwrap(),
            ],
        );
        let top = dir.path().join("man1").join(format!("{name}.1"));
        assert_eq!(std::fs::read_to_string(&top).unwrap(), page);
        for command in commands {
            let sub = dir.path().join("man1").join(format!("{name}-{command}.1"));
            assert!(sub.exists(), "no page {}", sub.display());
            assert!(
                listed.lines().any(|l| Path::new(l) == sub),
                "{} not listed:\n{listed}",
                sub.display()
            );
        }
        let rendered = output(
            Command::new("man")
                .args(["-l", "-P", "cat"])
                .arg(&top)
                .env("MANWIDTH", "100"),
            "man",
        );
        assert!(rendered.status.success(), "{rendered:?}");
        let text = without_overstrike(&String::from_utf8_lossy(&rendered.stdout));
        for section in ["NAME", "SYNOPSIS", "SUBCOMMANDS"] {
            assert!(
                text.contains(section),
                "{name}.1 renders no {section}:\n{text}"
            );
        }
        assert!(
            text.contains(&format!("{name}-serve(1)")),
            "{name}.1 does not point to its subcommands' pages:\n{text}"
        );
    }
}

/// `text` without a terminal pager's bold and underline (`X\x08X`, `_\x08X`).
fn without_overstrike(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The units with `/usr/local/bin/` pointed at the binaries just built (verify needs the
/// executable to exist), in `dir`.
fn units_for_built_binaries(dir: &Path) -> Vec<PathBuf> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let built = binary("tollgate");
    let built_dir = built.parent().unwrap();
    ["tollgate.service", "tollgate-server.service"]
        .iter()
        .map(|unit| {
            let text = std::fs::read_to_string(source.join(unit)).unwrap();
            assert!(text.contains("ExecStart=/usr/local/bin/"), "{unit}");
            let path = dir.join(unit);
            std::fs::write(
                &path,
                text.replace("/usr/local/bin/", &format!("{}/", built_dir.display())),
            )
            .unwrap();
            path
        })
        .collect()
}

#[test]
fn the_systemd_units_verify_cleanly_and_are_sandboxed() {
    let dir = tempfile::tempdir().unwrap();
    let units = units_for_built_binaries(dir.path());
    // The Documentation= pages, from the binaries themselves.
    let man1 = dir.path().join("man/man1");
    for (name, _) in BINARIES {
        stdout_of(name, &["man", "--out-dir", man1.to_str().unwrap()]);
    }
    let verified = output(
        Command::new("systemd-analyze")
            .arg("verify")
            .args(&units)
            .env("MANPATH", dir.path().join("man"))
            .env("SYSTEMD_LOG_COLOR", "0"),
        "systemd-analyze",
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(verified.status.success(), "verify failed:\n{said}");
    assert!(said.trim().is_empty(), "verify warned:\n{said}");
    for unit in &units {
        let text = std::fs::read_to_string(unit).unwrap();
        for line in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "CapabilityBoundingSet=\n",
            "SystemCallFilter=@system-service",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        ] {
            assert!(text.contains(line), "{}: no {line:?}", unit.display());
        }
        // Secrets come from an environment file, never from the command line.
        let exec = text.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        for secret in ["KEY", "SECRET", "DATABASE_URL", "postgres://", "sk-"] {
            assert!(!exec.contains(secret), "{exec}");
        }
        assert!(text.contains("EnvironmentFile="), "{}", unit.display());
        let security = output(
            Command::new("systemd-analyze")
                .args([
                    "security",
                    "--offline=yes",
                    "--no-pager",
                    &format!("--threshold={EXPOSURE_MAX_TENTHS}"),
                ])
                .arg(unit)
                .env("SYSTEMD_LOG_COLOR", "0"),
            "systemd-analyze",
        );
        assert!(
            security.status.success(),
            "{} is exposed beyond {EXPOSURE_MAX_TENTHS}/100:\n{}",
            unit.display(),
            String::from_utf8_lossy(&security.stdout)
        );
    }
    let agent = std::fs::read_to_string(&units[0]).unwrap();
    assert!(agent.contains("StateDirectory=tollgate"));
    assert!(agent.contains("--data-dir /var/lib/tollgate"));
}
