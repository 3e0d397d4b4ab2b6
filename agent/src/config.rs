//! Where the agent keeps its state: one data dir holding the SQLite file and the master key file.
//!
//! Resolution: `--data-dir` / `TOLLGATE_DATA_DIR`, else the platform data dir from `directories`
//! (e.g. `~/.local/share/tollgate`). The dir is created 0700 by `tollgate init`.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};

/// The database file's name inside the data dir.
pub const DATABASE_FILE: &str = "tollgate.db";

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data dir named on the command line, or the platform default.
    pub fn resolve(explicit: Option<PathBuf>) -> anyhow::Result<DataDir> {
        let root = match explicit {
            Some(dir) => dir,
            None => directories::ProjectDirs::from("", "", "tollgate")
                .map(|d| d.data_dir().to_path_buf())
                .ok_or_else(|| anyhow!("cannot find a home directory: pass --data-dir"))?,
        };
        Ok(DataDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn database(&self) -> PathBuf {
        self.root.join(DATABASE_FILE)
    }

    /// The sync server, agent id and credential (`tollgate enroll` writes it).
    pub fn sync_config(&self) -> PathBuf {
        self.root.join(crate::sync::SYNC_FILE)
    }

    /// Creates the dir (and parents) with mode 0700 if it is missing.
    pub fn create(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .with_context(|| format!("creating the data dir {}", self.root.display()))
    }
}
