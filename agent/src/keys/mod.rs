//! The BYOK vault: users' own provider keys, encrypted at rest with AES-256-GCM.
//!
//! - [`crypto`]: the envelope (its byte format is documented there), the associated data binding
//!   a ciphertext to its row, and [`MasterKey`] (zeroized on drop, printed `<redacted>`).
//! - [`master`]: where the master key comes from (`TOLLGATE_MASTER_KEY`, else
//!   `<data_dir>/master.key`, mode 0600) and creating the key file.
//! - [`vault`]: the operations over the ledger: add, list, open, remove, check, and rotation of
//!   the master key (one transaction; crash-safe for the key file).
//!
//! Invariants: only ciphertext reaches the ledger; no plaintext key, provider's or master, is
//! ever logged, printed or put in an error; nothing here reads the process environment (the
//! command layer passes the variables' values in). Only `ledger/` touches SQLite.

pub mod crypto;
pub mod master;
pub mod vault;

pub use crypto::{Binding, CryptoError, MasterKey};
pub use master::{
    InitOutcome, KeySource, MASTER_KEY_ENV, MASTER_KEY_FILE, NEW_MASTER_KEY_ENV,
    NEW_MASTER_KEY_FILE, init_key_file,
};
pub use vault::{
    RotationReport, VaultError, add_key, check_all, check_master, list_keys, load_master,
    open_default, remove_key, rotate, rotate_env, rotate_key_file, rotate_master,
};
