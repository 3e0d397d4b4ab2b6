//! Bad input to the CLI: each case gets a one-line error naming the problem, a non-zero exit,
//! and leaves the books exactly as they were.

use tollgate_e2e::Agent;

/// (arguments, what the one-line error must say)
const CASES: &[(&[&str], &str)] = &[
    (
        &["credits", "add", "alice", "abc", "--type", "purchase"],
        "invalid AMOUNT: amount \"abc\" is not a decimal number",
    ),
    (
        &["credits", "add", "alice", "1.0000000001", "--type", "bonus"],
        "has more than 9 decimal places",
    ),
    (
        &["credits", "add", "alice", "1e3", "--type", "bonus"],
        "is not a decimal number",
    ),
    (
        &["credits", "add", "alice", "99999999999", "--type", "bonus"],
        "is out of range",
    ),
    (
        &["credits", "add", "alice", "0", "--type", "bonus"],
        "it must not be zero",
    ),
    (
        &["credits", "add", "alice", "-5", "--type", "purchase"],
        "only an admin_adjustment may be negative",
    ),
    (
        &[
            "credits",
            "add",
            "alice",
            "-500",
            "--type",
            "admin_adjustment",
        ],
        "insufficient credit for alice: available 10, needed 500",
    ),
    (
        &["credits", "add", "bob", "5", "--type", "purchase"],
        "unknown user \"bob\"",
    ),
    (
        &["credits", "add", "alice", "5", "--type", "gift"],
        "invalid --type: unknown credit type \"gift\" (expected one of: purchase, bonus, refund, admin_adjustment, allowance, escrow)",
    ),
    (
        &["credits", "add", "alice", "5", "--type", "allowance"],
        "allowance is granted by monthly renewal",
    ),
    (
        &[
            "credits",
            "add",
            "alice",
            "5",
            "--type",
            "purchase",
            "--package",
            "Gold Pack",
        ],
        "unknown credit package \"Gold Pack\"",
    ),
    (
        &[
            "credits",
            "add",
            "alice",
            "5",
            "--type",
            "purchase",
            "--package",
            "Starter Pack",
        ],
        "package \"Starter Pack\" is 100 credits, not 5",
    ),
    (
        &[
            "credits",
            "add",
            "alice",
            "5",
            "--type",
            "bonus",
            "--package",
            "Starter Pack",
        ],
        "a package can only be named on a purchase",
    ),
    (
        &[
            "credits",
            "add",
            "alice",
            "5",
            "--type",
            "purchase",
            "--idempotency-key",
            "k-used",
        ],
        "idempotency key \"k-used\" was already used for a different operation",
    ),
    (
        &[
            "credits",
            "add",
            "alice",
            "5",
            "--type",
            "refund",
            "--refund-of",
            "nope",
        ],
        "unknown journal entry \"nope\"",
    ),
    (
        &[
            "credits",
            "add",
            "alice",
            "5",
            "--type",
            "bonus",
            "--expires-at",
            "yesterday",
        ],
        "invalid expiry: \"yesterday\" is not an RFC 3339 time",
    ),
    (
        &[
            "credits",
            "add",
            "alice",
            "5",
            "--type",
            "bonus",
            "--expires-at",
            "2001-01-01T00:00:00Z",
        ],
        "is not in the future",
    ),
    (
        &["credits", "debit", "alice", "1000"],
        "insufficient credit for alice: available 10, needed 1000",
    ),
    (
        &["credits", "debit", "alice", "-1"],
        "a debit must be positive",
    ),
    (
        &["credits", "debit", "alice", "1", "--idempotency-key", ""],
        "invalid idempotency key: it must be 1 to 255 bytes long",
    ),
    (
        &[
            "credits",
            "add",
            "alice",
            "5",
            "--type",
            "bonus",
            "--idempotency-key",
            "admin:x",
        ],
        "keys starting with \"admin:\" are reserved for the central server",
    ),
    (
        &[
            "credits",
            "debit",
            "alice",
            "1",
            "--idempotency-key",
            "stripe:cs_1",
        ],
        "keys starting with \"stripe:\" are reserved for the central server",
    ),
    (&["credits", "history", "nobody"], "unknown user \"nobody\""),
    (&["users", "add", "alice"], "user \"alice\" already exists"),
    (
        &["users", "add", "bad user!"],
        "invalid user id \"bad user!\"",
    ),
    (
        &["users", "add", "carol", "--tier", "gold"],
        "invalid --tier: unknown tier \"gold\" (expected one of: free, trial, starter, professional, enterprise)",
    ),
    (
        &["users", "add", "carol", "--power-level", "turbo"],
        "invalid --power-level: unknown power level \"turbo\"",
    ),
    (
        &["users", "add", "carol", "--monthly-cap", "-3"],
        "a monthly spend cap cannot be negative",
    ),
    (
        &["users", "add", "carol", "--monthly-allowance", "ten"],
        "invalid --monthly-allowance: amount \"ten\" is not a decimal number",
    ),
    (&["users", "set", "alice"], "nothing to change"),
    (
        &["users", "set", "alice", "--auto-renew", "maybe"],
        "invalid --auto-renew: \"maybe\" (expected true or false)",
    ),
    (&["users", "show", "nobody"], "unknown user \"nobody\""),
    (
        &["users", "api-key", "revoke", "key_nope"],
        "unknown API key \"key_nope\"",
    ),
    (
        &["users", "api-key", "create", "nobody"],
        "unknown user \"nobody\"",
    ),
    (
        &["keys", "add", "alice", "--provider", "foo", "--name", "x"],
        "invalid --provider: unknown provider \"foo\"",
    ),
    (
        &[
            "keys",
            "remove",
            "alice",
            "--provider",
            "openai",
            "--name",
            "x",
        ],
        "alice has no openai key named \"x\"",
    ),
    (
        &["credits", "import", "/nonexistent/ops.jsonl"],
        "opening /nonexistent/ops.jsonl",
    ),
    (
        &[
            "credits",
            "add",
            "alice",
            "5",
            "--type",
            "bonus",
            "--note",
            "paid\nforged line",
        ],
        "invalid note: it contains the control character '\\n'",
    ),
    (
        &["credits", "debit", "alice", "1", "--note", "tab\there"],
        "invalid note: it contains the control character '\\t'",
    ),
    (
        &[
            "credits",
            "add",
            "alice",
            "5",
            "--type",
            "refund",
            "--refund-of",
            "nope",
            "--expires-at",
            "2999-01-01T00:00:00Z",
        ],
        "invalid expiry: a refund of a debit cannot set one",
    ),
    (
        &[
            "credits",
            "add",
            "alice",
            "-1",
            "--type",
            "admin_adjustment",
            "--expires-at",
            "2999-01-01T00:00:00Z",
        ],
        "invalid expiry: a negative admin_adjustment cannot set one",
    ),
    (
        &["users", "api-key", "create", "alice", "--name", "ci\nkey"],
        "invalid key name: \"ci\\nkey\" contains the control character '\\n'",
    ),
    (
        &["serve", "--listen", "nowhere"],
        "invalid listen: \"nowhere\" is not an address",
    ),
    (
        &["serve", "--admin-listen", "localhost"],
        "invalid admin_listen: \"localhost\" is not an address like 127.0.0.1:4101",
    ),
    (
        &["serve", "--upstream", "ftp://litellm"],
        "invalid upstream.url: \"ftp://litellm\": use http or https",
    ),
    (
        &["serve", "--config", "/nonexistent/tollgate.toml"],
        "cannot read config file /nonexistent/tollgate.toml",
    ),
];

#[test]
fn each_bad_input_gets_a_one_line_error_and_writes_nothing() {
    let agent = Agent::init("local");
    agent.ok(&["users", "add", "alice"]);
    agent.ok(&[
        "credits",
        "add",
        "alice",
        "10",
        "--type",
        "bonus",
        "--idempotency-key",
        "k-used",
    ]);
    let before = agent.assert_verified();
    let history_before = agent.json(&["credits", "history", "alice"]);

    for (args, expected) in CASES {
        let out = agent.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: not one line: {stderr}"
        );
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in {stderr}"
        );
    }

    let after = agent.assert_verified();
    assert_eq!(
        before["entries"], after["entries"],
        "a refused command wrote to the journal"
    );
    assert_eq!(agent.json(&["credits", "history", "alice"]), history_before);
    assert_eq!(agent.balance("alice"), "10");
}

#[test]
fn a_missing_database_is_named_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let out = std::process::Command::new(tollgate_e2e::binary("tollgate"))
        .args([
            "--data-dir",
            missing.to_str().unwrap(),
            "credits",
            "balance",
            "alice",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no tollgate database at") && stderr.contains("run `tollgate init` first"),
        "{stderr}"
    );
    assert!(!missing.exists(), "a typo in --data-dir created a data dir");
}

#[test]
fn a_refused_keyed_debit_is_refused_again_after_credit_arrives() {
    let agent = Agent::init("local");
    agent.ok(&["users", "add", "alice"]);
    let first = agent.run(&["credits", "debit", "alice", "5", "--idempotency-key", "d1"]);
    assert!(!first.status.success());
    agent.ok(&["credits", "add", "alice", "50", "--type", "bonus"]);
    let retry = agent.run(&["credits", "debit", "alice", "5", "--idempotency-key", "d1"]);
    assert!(!retry.status.success());
    assert_eq!(
        first.stderr, retry.stderr,
        "a retry after a refusal must be refused the same way"
    );
    assert_eq!(agent.balance("alice"), "50");
    agent.assert_verified();
}

#[test]
fn the_same_key_and_content_returns_the_original_entry() {
    let agent = Agent::init("local");
    agent.ok(&["users", "add", "alice"]);
    let args = [
        "credits",
        "add",
        "alice",
        "100",
        "--type",
        "purchase",
        "--package",
        "Starter Pack",
        "--idempotency-key",
        "cs_test_1",
    ];
    let first = agent.json(&args);
    let second = agent.json(&args);
    assert_eq!(first, second);
    assert_eq!(agent.balance("alice"), "100");
    agent.assert_verified();
}

#[test]
fn a_package_above_the_users_tier_is_refused_naming_both_tiers() {
    let agent = Agent::init("local");
    agent.ok(&["users", "add", "alice", "--tier", "trial"]);
    let db = agent.data_dir().join(tollgate::config::DATABASE_FILE);
    let conn = tollgate::ledger::db::open(&db, tollgate::ledger::OpenMode::MustExist).unwrap();
    let changed = conn
        .execute(
            "UPDATE credit_packages SET min_tier = 'professional' WHERE name = 'Starter Pack'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);

    let buy = [
        "credits",
        "add",
        "alice",
        "100",
        "--type",
        "purchase",
        "--package",
        "Starter Pack",
    ];
    let out = agent.run(&buy);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bought above the tier");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(
        stderr.contains(
            "package \"Starter Pack\" needs the professional tier or above; alice is on the trial tier"
        ),
        "{stderr}"
    );
    assert_eq!(agent.balance("alice"), "0");

    agent.ok(&["users", "set", "alice", "--tier", "enterprise"]);
    agent.ok(&buy);
    assert_eq!(agent.balance("alice"), "100");
    agent.assert_verified();
}

#[test]
fn an_over_long_import_line_stops_the_import_after_the_lines_before_it() {
    let agent = Agent::init("local");
    agent.ok(&["users", "add", "alice"]);
    let add = |key: &str| {
        format!(
            r#"{{"op":"add","user":"alice","amount":"1","type":"bonus","idempotency_key":"{key}"}}"#
        )
    };
    // No newline after the long line: it must not be read whole.
    let long = format!(
        r#"{{"op":"debit","user":"alice","amount":"1","note":"{}"}}"#,
        "x".repeat(1 << 20)
    );
    let file = agent.data_dir().join("ops.jsonl");
    std::fs::write(&file, format!("{}\n{}\n{long}", add("i1"), add("i2"))).unwrap();

    let out = agent.run(&[
        "credits",
        "import",
        file.to_str().unwrap(),
        "--batch-size",
        "5",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(
        stderr.contains("line 3 is longer than 65536 bytes; the import stopped there"),
        "{stderr}"
    );
    let results: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(results.iter().all(|r| r["ok"].is_object()), "{results:?}");
    assert_eq!(agent.balance("alice"), "2");
    agent.assert_verified();
}
