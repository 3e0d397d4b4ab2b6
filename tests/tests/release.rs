//! The release archive (`deploy/release.sh`), made from the binaries this build just made
//! (`TOLLGATE_RELEASE_BIN_DIR`: no release build in the test): its name, its exact file list,
//! binaries that run `--version` from the unpacked archive and are the ones built, man pages and
//! completions for both binaries, and checksums that `sha256sum -c` accepts and that equal the
//! SHA-256 of each file as computed here. Needs `bash`, `tar`, `gzip` and `sha256sum`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use tollgate_e2e::binary;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn host() -> String {
    let out = Command::new("rustc").arg("-vV").output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap()
        .to_owned()
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.insert(path.strip_prefix(dir).unwrap().to_str().unwrap().to_owned());
            }
        }
    }
    found
}

#[test]
fn the_release_archive_holds_both_binaries_their_docs_units_and_checksums() {
    let out = tempfile::tempdir().unwrap();
    let bin_dir = binary("tollgate").parent().unwrap().to_owned();
    let made = Command::new("bash")
        .arg(repo().join("deploy/release.sh"))
        .env("TOLLGATE_RELEASE_BIN_DIR", &bin_dir)
        .env("TOLLGATE_RELEASE_OUT", out.path())
        .env("TOLLGATE_RELEASE_GZIP", "1")
        .output()
        .expect("bash could not run");
    assert!(
        made.status.success(),
        "release.sh failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("tollgate-{version}-{}", host());
    let archive = out.path().join(format!("{name}.tar.gz"));
    assert_eq!(
        String::from_utf8_lossy(&made.stdout).trim(),
        archive.to_str().unwrap()
    );

    // The archive's own checksum, beside it.
    let sums = std::fs::read_to_string(out.path().join(format!("{name}.tar.gz.sha256"))).unwrap();
    let digest = hex::encode(Sha256::digest(std::fs::read(&archive).unwrap()));
    assert_eq!(sums, format!("{digest}  {name}.tar.gz\n"));

    let unpacked = tempfile::tempdir().unwrap();
    let tar = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(unpacked.path())
        .status()
        .expect("tar could not run");
    assert!(tar.success());
    let root = unpacked.path().join(&name);
    let list = files(&root);

    // Exactly these, and man pages.
    let fixed: BTreeSet<String> = [
        "bin/tollgate",
        "bin/tollgate-server",
        "systemd/tollgate.service",
        "systemd/tollgate-server.service",
        "tollgate.example.toml",
        "README.md",
        "SHA256SUMS",
        "completions/bash/tollgate",
        "completions/bash/tollgate-server",
        "completions/zsh/_tollgate",
        "completions/zsh/_tollgate-server",
        "completions/fish/tollgate.fish",
        "completions/fish/tollgate-server.fish",
    ]
    .into_iter()
    .map(String::from)
    .chain(
        repo()
            .join("LICENSE")
            .exists()
            .then(|| "LICENSE".to_owned()),
    )
    .collect();
    let (man, rest): (BTreeSet<String>, BTreeSet<String>) = list
        .iter()
        .cloned()
        .partition(|f| f.starts_with("man/man1/"));
    assert_eq!(rest, fixed);
    for page in [
        "tollgate.1",
        "tollgate-serve.1",
        "tollgate-users-add.1",
        "tollgate-server.1",
        "tollgate-server-serve.1",
        "tollgate-server-migrate.1",
    ] {
        assert!(
            man.contains(&format!("man/man1/{page}")),
            "{page} missing: {man:?}"
        );
    }
    assert!(man.iter().all(|m| m.ends_with(".1")), "{man:?}");

    // The binaries run from the archive, and are the ones built.
    for b in ["tollgate", "tollgate-server"] {
        let shipped = root.join("bin").join(b);
        let ran = Command::new(&shipped).arg("--version").output().unwrap();
        assert!(ran.status.success());
        assert_eq!(
            String::from_utf8(ran.stdout).unwrap(),
            format!("{b} {version}\n")
        );
        assert_eq!(
            std::fs::read(&shipped).unwrap(),
            std::fs::read(bin_dir.join(b)).unwrap(),
            "{b} is not the binary built"
        );
    }
    // The units and example config are the repository's.
    for (shipped, source) in [
        (
            "systemd/tollgate.service",
            "deploy/systemd/tollgate.service",
        ),
        ("tollgate.example.toml", "tollgate.example.toml"),
    ] {
        assert_eq!(
            std::fs::read(root.join(shipped)).unwrap(),
            std::fs::read(repo().join(source)).unwrap()
        );
    }

    // SHA256SUMS: every other file once, each digest right (computed here), and sha256sum agrees.
    let sums = std::fs::read_to_string(root.join("SHA256SUMS")).unwrap();
    let mut listed = BTreeSet::new();
    for line in sums.lines() {
        let (digest, file) = line.split_once("  ").unwrap();
        let actual = hex::encode(Sha256::digest(std::fs::read(root.join(file)).unwrap()));
        assert_eq!(digest, actual, "{file}");
        listed.insert(file.to_owned());
    }
    let mut expected = list.clone();
    expected.remove("SHA256SUMS");
    assert_eq!(listed, expected);
    let check = Command::new("sha256sum")
        .args(["--check", "--quiet", "SHA256SUMS"])
        .current_dir(&root)
        .status()
        .expect("sha256sum could not run");
    assert!(check.success());
    // A changed file is caught.
    std::fs::write(root.join("README.md"), "tampered").unwrap();
    let check = Command::new("sha256sum")
        .args(["--check", "--quiet", "--status", "SHA256SUMS"])
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(!check.success());
}
