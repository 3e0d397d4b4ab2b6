//! `tollgate init`: create the data dir (0700), the database and the master key file (0600).
//! Running it again changes nothing and says so.

use std::process::ExitCode;
use std::sync::Arc;

use serde::Serialize;

use super::{Ctx, done, output};
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
    let master_key = String::from("pending");
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
