//! `tollgate init`: create the data dir (0700), the database and the master key file (0600).
//! Running it again changes nothing and says so.

use std::process::ExitCode;
use std::sync::Arc;

use serde::Serialize;

use super::{Ctx, done, output};
use zeroize::Zeroizing;

use crate::keys::{InitOutcome, MASTER_KEY_ENV, MasterKey, init_key_file};
use crate::ledger::{Ledger, OpenMode, SystemClock};

#[derive(Debug, Serialize)]
struct Initialized {
    data_dir: String,
    database: String,
    master_key: String,
}

pub fn run(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    ctx.data_dir.create()?;
    let database = ctx.data_dir.database();
    Ledger::open(&database, OpenMode::CreateIfMissing, Arc::new(SystemClock))?;
    let master_key = if let Ok(value) = std::env::var(MASTER_KEY_ENV) {
        // Checked now, so a malformed key is found at init rather than at the first `keys add`.
        MasterKey::from_base64(&Zeroizing::new(value), MASTER_KEY_ENV)?;
        format!("from {MASTER_KEY_ENV} (no key file written)")
    } else {
        match init_key_file(ctx.data_dir.root())? {
            InitOutcome::Created(path) => format!("created {}", path.display()),
            InitOutcome::Existed(path) => format!("kept {}", path.display()),
        }
    };
    let report = Initialized {
        data_dir: ctx.data_dir.root().display().to_string(),
        database: database.display().to_string(),
        master_key,
    };
    if ctx.json {
        return done(output::json(&report));
    }
    done(output::fields(&[
        ("data dir", report.data_dir),
        ("database", report.database),
        ("master key", report.master_key),
    ]))
}
