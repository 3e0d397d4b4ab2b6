//! `tollgate keys …` through the real binary: the secret goes in on stdin only, comes out
//! nowhere, survives a master key rotation, and a wrong master key is a one-line error.

use std::process::Output;

use tollgate_e2e::{Agent, spawn_with_stdin};

const SECRET: &str = "sk-test-CLI-CANARY-0123456789abcdef";

fn add_key(agent: &Agent, secret: &str, extra_env: Option<(&str, &str)>) -> Output {
    let mut cmd = agent.command(&[
        "keys",
        "add",
        "alice",
        "--provider",
        "openai",
        "--name",
        "main",
        "--default",
    ]);
    if let Some((k, v)) = extra_env {
        cmd.env(k, v);
    }
    spawn_with_stdin(cmd, format!("{secret}\n").as_bytes())
        .wait_with_output()
        .unwrap()
}

#[test]
fn a_key_goes_in_on_stdin_and_is_only_ever_shown_by_its_last_four() {
    let agent = Agent::init("local");
    agent.ok(&["users", "add", "alice"]);
    let out = add_key(&agent, SECRET, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        !printed.contains(SECRET) && printed.contains("…cdef"),
        "{printed}"
    );

    let listed = agent.ok(&["keys", "list", "alice"]);
    let listed_json = agent.ok(&["--json", "keys", "list", "alice"]);
    for shown in [&listed, &listed_json] {
        assert!(!shown.contains(SECRET), "the secret was printed: {shown}");
        assert!(
            shown.contains("cdef") && shown.contains("sha256:"),
            "{shown}"
        );
    }

    let rotated = agent.ok(&["keys", "rotate-master"]);
    assert!(rotated.contains("re-encrypted 1 stored keys"), "{rotated}");
    // Still listed, and still usable: adding another key needs the (new) master key to match.
    assert!(agent.ok(&["keys", "list", "alice"]).contains("main"));
    let again = add_key(&agent, "sk-second-key-0000000000", None);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("already has a key named \"main\" for openai"),
        "{stderr}"
    );
}

#[test]
fn a_wrong_master_key_is_a_one_line_error_that_names_the_key_ids() {
    let agent = Agent::init("local");
    agent.ok(&["users", "add", "alice"]);
    assert!(add_key(&agent, SECRET, None).status.success());
    // Another valid key, from the env, which takes precedence over the file.
    let other = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIzNDU=";
    let out = add_key(
        &agent,
        "sk-another-0000000000000",
        Some(("TOLLGATE_MASTER_KEY", other)),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("master key"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(other),
        "the key itself was printed: {stderr}"
    );
}

#[test]
fn no_secret_on_stdin_is_named() {
    let agent = Agent::init("local");
    agent.ok(&["users", "add", "alice"]);
    let out = agent.run(&[
        "keys",
        "add",
        "alice",
        "--provider",
        "openai",
        "--name",
        "main",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no key on stdin"), "{stderr}");
    assert!(agent.ok(&["--json", "keys", "list", "alice"]).trim() == "[]");
}
