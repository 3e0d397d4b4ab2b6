//! `tollgate prices` through the real binary: the built-in table until an import, LiteLLM's map
//! imported with exact prices, re-imports that change nothing, new versions, and bad files that
//! are refused on one line and leave the table as it was.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use tollgate::ledger::db::{self, OpenMode};
use tollgate::ledger::{AddCredits, CreditKind, Ledger, NewUser, SystemClock};
use tollgate::prices::{PRICE_FILE_BYTES_MAX, PriceTable};

use tollgate_e2e::Agent;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/litellm_prices.json")
}

fn path_arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Rows in the two price tables, read past the CLI.
fn stored_rows(agent: &Agent) -> (i64, i64) {
    let conn = db::open(&agent.data_dir().join("tollgate.db"), OpenMode::MustExist).unwrap();
    let count = |table: &str| -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    (count("price_tables"), count("model_prices"))
}

fn model<'a>(listing: &'a Value, name: &str) -> &'a Value {
    listing["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {listing:#}"))
}

#[test]
fn the_builtin_table_is_listed_until_a_table_is_imported() {
    let agent = Agent::init("local");
    let listing = agent.json(&["prices", "list"]);
    assert_eq!(listing["version"], "builtin-2026-11");
    assert_eq!(listing["source"], "builtin");
    assert_eq!(listing["models"].as_array().unwrap().len(), 15);
    assert_eq!(
        model(&listing, "claude-opus-4"),
        &json!({
            "model": "claude-opus-4",
            "provider": "anthropic",
            "mode": "chat",
            "input_usd_per_token": "0.000015",
            "output_usd_per_token": "0.000075",
            "input_usd_per_million": "15",
            "output_usd_per_million": "75",
            "max_output_tokens": 32000,
            "quality_score": 98,
            "dimensions": {"cache_read_input": "0.0000015", "cache_creation_input": "0.00001875"}
        })
    );
    let text = agent.ok(&["prices", "list"]);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("price table builtin-2026-11 (builtin, 15 models, 0 aliases)")
    );
    let header = lines.next().unwrap();
    assert!(header.starts_with("MODEL"), "{header}");
    let mini: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("gpt-4o-mini "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        mini,
        [
            "gpt-4o-mini",
            "openai",
            "chat",
            "0.15",
            "0.6",
            "0.075",
            "16384",
            "82"
        ]
    );
    let embedding: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("text-embedding-3-small "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        embedding,
        [
            "text-embedding-3-small",
            "openai",
            "embedding",
            "0.02",
            "0",
            "-",
            "-",
            "-"
        ]
    );
}

#[test]
fn an_import_stores_exact_prices_and_a_reimport_changes_nothing() {
    let agent = Agent::init("local");
    let file = fixture();
    let out = agent.ok(&["prices", "import", path_arg(&file)]);
    assert_eq!(
        out.trim(),
        "imported price table version 1: 6 models (skipped 3 of other modes, 1 without prices, \
         0 unreadable)"
    );
    let listing = agent.json(&["prices", "list"]);
    assert_eq!(listing["version"], "imported-1");
    assert_eq!(listing["source"], "stored");
    let names: Vec<&str> = listing["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "amazon.nova-2-pro-preview-20251202-v1:0",
            "claude-3-5-haiku-20241022",
            "gemini/gemini-2.0-flash",
            "gpt-3.5-turbo-instruct",
            "gpt-4o-mini",
            "text-embedding-3-small"
        ]
    );
    // 1.5e-07 and 6e-07 in the file, exactly; the quality score from the built-in table.
    assert_eq!(
        model(&listing, "gpt-4o-mini"),
        &json!({
            "model": "gpt-4o-mini",
            "provider": "openai",
            "mode": "chat",
            "input_usd_per_token": "0.00000015",
            "output_usd_per_token": "0.0000006",
            "input_usd_per_million": "0.15",
            "output_usd_per_million": "0.6",
            "max_output_tokens": 16384,
            "quality_score": 82,
            "dimensions": {"cache_read_input": "0.000000075"}
        })
    );
    let nova = model(&listing, "amazon.nova-2-pro-preview-20251202-v1:0");
    assert_eq!(nova["provider"], "bedrock_converse");
    assert_eq!(nova["input_usd_per_token"], "0.0000021875");
    assert_eq!(nova["output_usd_per_million"], "17.5");
    assert_eq!(nova["quality_score"], Value::Null);
    assert_eq!(
        model(&listing, "gemini/gemini-2.0-flash")["provider"],
        "google"
    );
    let instruct = model(&listing, "gpt-3.5-turbo-instruct");
    assert_eq!(
        (&instruct["provider"], &instruct["mode"]),
        (&json!("openai"), &json!("completion"))
    );
    let embedding = model(&listing, "text-embedding-3-small");
    assert_eq!(embedding["input_usd_per_token"], "0.00000002");
    assert_eq!(embedding["output_usd_per_token"], "0");
    assert_eq!(
        embedding["max_output_tokens"], 8191,
        "max_tokens as fallback"
    );
    let text = agent.ok(&["prices", "list"]);
    assert!(
        text.starts_with("price table imported-1 (stored, 6 models, 0 aliases)\n"),
        "{text}"
    );
    assert_eq!(stored_rows(&agent), (1, 6));

    // The same file again: the same version, nothing written.
    let again = agent.json(&["prices", "import", path_arg(&file)]);
    assert_eq!(again["version"], 1);
    assert_eq!(again["unchanged"], true);
    assert_eq!(again["models"], 6);
    assert_eq!(stored_rows(&agent), (1, 6));
    let out = agent.ok(&["prices", "import", path_arg(&file)]);
    assert!(
        out.starts_with("unchanged: price table version 1 already holds this file: 6 models"),
        "{out}"
    );

    // A changed file: version 2, which is now the one listed.
    let dir = tempfile::tempdir().unwrap();
    let changed = dir.path().join("changed.json");
    let body = std::fs::read_to_string(&file).unwrap().replace(
        "\"input_cost_per_token\": 1.5e-07",
        "\"input_cost_per_token\": 1.6e-07",
    );
    std::fs::write(&changed, body).unwrap();
    let second = agent.json(&["prices", "import", path_arg(&changed)]);
    assert_eq!(second["version"], 2);
    assert_eq!(second["unchanged"], false);
    assert_eq!(second["skipped_other_modes"], 3);
    assert_eq!(second["skipped_unpriced"], 1);
    let listing = agent.json(&["prices", "list"]);
    assert_eq!(listing["version"], "imported-2");
    assert_eq!(
        model(&listing, "gpt-4o-mini")["input_usd_per_token"],
        "0.00000016"
    );
    assert_eq!(stored_rows(&agent), (2, 12));
    agent.assert_verified();
}

#[test]
fn bad_price_files_are_refused_on_one_line_and_change_nothing() {
    let agent = Agent::init("local");
    agent.ok(&["prices", "import", path_arg(&fixture())]);
    let before = agent.json(&["prices", "list"]);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    let huge = dir.path().join("huge.json");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(PRICE_FILE_BYTES_MAX + 1)
        .unwrap();
    let cases: Vec<(PathBuf, String)> = vec![
        (
            write("not-json.json", "model,price\ngpt,1\n"),
            "the price file is not valid JSON: expected value at line 1 column 1".into(),
        ),
        (
            write(
                "negative.json",
                r#"{"gpt-x": {"mode": "chat", "litellm_provider": "openai",
                    "input_cost_per_token": -1.5e-07, "output_cost_per_token": 6e-07}}"#,
            ),
            "entry \"gpt-x\": input_cost_per_token is negative (-1.5e-07)".into(),
        ),
        (
            write("array.json", r#"[{"gpt-x": {}}]"#),
            "the price file must be a JSON object keyed by model name, not an array".into(),
        ),
        (
            write("entry.json", r#"{"gpt-x": "cheap"}"#),
            "entry \"gpt-x\": must be a JSON object, not a string".into(),
        ),
        (
            write(
                "string-price.json",
                r#"{"gpt-x": {"mode": "chat", "litellm_provider": "openai",
                    "input_cost_per_token": "0.1", "output_cost_per_token": 1}}"#,
            ),
            "entry \"gpt-x\": input_cost_per_token must be a number, not a string (\"0.1\")".into(),
        ),
        (
            write(
                "images-only.json",
                r#"{"dall-e": {"mode": "image_generation"}}"#,
            ),
            "no chat, completion, embedding or responses model with prices".into(),
        ),
        (
            huge.clone(),
            format!(
                "the price file is {} bytes, more than the limit of {PRICE_FILE_BYTES_MAX} bytes",
                PRICE_FILE_BYTES_MAX + 1
            ),
        ),
        (
            dir.path().join("missing.json"),
            "No such file or directory".into(),
        ),
    ];
    for (path, expected) in &cases {
        let out = agent.run(&["prices", "import", path_arg(path)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{path:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{path:?}");
        assert_eq!(stderr.lines().count(), 1, "{path:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(
            stderr.contains(path_arg(path)),
            "the error names the file: {stderr}"
        );
        assert!(
            stderr.contains(expected.as_str()),
            "{path:?}\n  gave: {stderr}  want: {expected}"
        );
    }
    assert_eq!(agent.json(&["prices", "list"]), before);
    assert_eq!(stored_rows(&agent), (1, 6));
}

#[test]
fn a_version_1_database_upgrades_and_keeps_its_books() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let mut ledger =
            Ledger::open(&path, OpenMode::CreateIfMissing, Arc::new(SystemClock)).unwrap();
        ledger.create_user(&NewUser::new("alice")).unwrap();
        ledger
            .add_credits(AddCredits::new(
                "alice",
                "7.5".parse().unwrap(),
                CreditKind::Purchase,
            ))
            .unwrap();
    }
    // Take the file back to schema version 1, as an older tollgate left it.
    let conn = db::open(&path, OpenMode::MustExist).unwrap();
    conn.execute_batch(
        "ALTER TABLE user_credits DROP COLUMN overdraft_key;
         ALTER TABLE user_credits DROP COLUMN overdraft_line;
         ALTER TABLE user_credits DROP COLUMN escrow_valid_until;
         ALTER TABLE user_credits DROP COLUMN fleet;
         ALTER TABLE api_keys DROP COLUMN origin;
         DROP TABLE served_responses; DROP TABLE inbox_events; DROP TABLE sync_state;
         DROP TABLE price_aliases;
         DROP TABLE model_prices; DROP TABLE price_tables;
         DELETE FROM refinery_schema_history WHERE version >= 2;",
    )
    .unwrap();
    assert_eq!(db::schema_version(&conn).unwrap(), Some(1));
    drop(conn);

    let mut ledger = Ledger::open(&path, OpenMode::MustExist, Arc::new(SystemClock)).unwrap();
    assert_eq!(ledger.account("alice").unwrap().balance.to_string(), "7.5");
    assert_eq!(ledger.price_table_version().unwrap(), None);
    let models: Vec<_> = PriceTable::builtin().models().cloned().collect();
    let import = ledger
        .import_prices("builtin", &"0".repeat(64), &models)
        .unwrap();
    assert_eq!(import.version, 1);
    assert_eq!(ledger.price_table().unwrap().unwrap().len(), 15);
    assert!(ledger.verify().unwrap().is_clean());
}

#[test]
fn prices_are_set_aliased_listed_by_version_and_rolled_back() {
    let agent = Agent::init("local");
    let show = |model: &str| agent.json(&["prices", "show", model]);
    // A built-in model's price changed: a new version, the rest of the table kept.
    agent.ok(&[
        "prices",
        "set",
        "gpt-4o-mini",
        "--input",
        "0.2",
        "--cache-read",
        "0.1",
    ]);
    let mini = show("gpt-4o-mini");
    assert_eq!(mini["input_usd_per_million"], "0.2");
    assert_eq!(mini["output_usd_per_million"], "0.6", "unchanged");
    assert_eq!(mini["dimensions"]["cache_read_input"], "0.0000001");
    assert_eq!(
        agent.json(&["prices", "list"])["models"]
            .as_array()
            .unwrap()
            .len(),
        15
    );
    // A new model needs its provider and both prices.
    let out = agent.run(&["prices", "set", "house", "--input", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--provider"));
    agent.ok(&[
        "prices",
        "set",
        "house",
        "--provider",
        "openai",
        "--input",
        "1",
        "--output",
        "2",
        "--max-output-tokens",
        "8192",
    ]);
    assert_eq!(show("house")["output_usd_per_token"], "0.000002");
    // An alias is charged as its model.
    agent.ok(&["prices", "alias", "my-house", "house"]);
    assert_eq!(show("my-house")["model"], "house");
    let out = agent.run(&["prices", "alias", "x", "no-such-model"]);
    assert_eq!(out.status.code(), Some(1));
    // Every change is a version; the newest is active.
    let versions = agent.json(&["prices", "versions"]);
    let origins: Vec<&str> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["origin"].as_str().unwrap())
        .collect();
    assert_eq!(origins, ["alias", "set", "set"]);
    assert_eq!(versions[0]["active"], true);
    assert_eq!(versions[0]["alias_count"], 1);
    // Back to the built-in table, then forward to version 2 (house, no alias): new versions.
    agent.ok(&["prices", "use", "builtin"]);
    assert_eq!(show("gpt-4o-mini")["input_usd_per_million"], "0.15");
    assert_eq!(
        agent.run(&["prices", "show", "house"]).status.code(),
        Some(1)
    );
    agent.ok(&["prices", "use", "2"]);
    assert_eq!(show("house")["input_usd_per_million"], "1");
    assert_eq!(
        agent.run(&["prices", "show", "my-house"]).status.code(),
        Some(1)
    );
    assert_eq!(
        agent
            .json(&["prices", "versions"])
            .as_array()
            .unwrap()
            .len(),
        5
    );
    // Bad input: one line, nothing stored.
    for args in [
        &["prices", "use", "99"][..],
        &["prices", "use", "yesterday"],
        &["prices", "set", "gpt-4o", "--input", "abc"],
        &["prices", "set", "gpt-4o", "--output", "-1"],
        &["prices", "set", "gpt-4o", "--mode", "image"],
    ] {
        let out = agent.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
    assert_eq!(
        agent
            .json(&["prices", "versions"])
            .as_array()
            .unwrap()
            .len(),
        5
    );
}
