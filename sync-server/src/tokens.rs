//! Secrets the server issues: agent credentials, one-time enrolment tokens and admin tokens.
//!
//! Guarantees: 32 random bytes from the OS, URL-safe base64 behind a prefix naming the kind
//! (`tga_` agent credential, `tge_` enrolment token, `tgadm_` admin token); only their SHA-256 is
//! stored; the plaintext lives in a `Zeroizing` string and is shown once.

use base64::Engine;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Prefix of an agent credential.
pub const AGENT_CREDENTIAL_PREFIX: &str = "tga_";
/// Prefix of a one-time enrolment token.
pub const ENROLLMENT_TOKEN_PREFIX: &str = "tge_";
/// Prefix of an admin API token.
pub const ADMIN_TOKEN_PREFIX: &str = "tgadm_";

/// A new random secret with `prefix`.
pub fn generate(prefix: &str) -> anyhow::Result<Zeroizing<String>> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut_slice())
        .map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
    let mut out = Zeroizing::new(String::with_capacity(prefix.len() + 43));
    out.push_str(prefix);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes.as_slice(), &mut out);
    Ok(out)
}

/// What is stored for a secret: its SHA-256.
pub fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_random_and_hashed() {
        let a = generate(ADMIN_TOKEN_PREFIX).unwrap();
        let b = generate(ADMIN_TOKEN_PREFIX).unwrap();
        assert!(a.starts_with("tgadm_") && a.len() == 6 + 43, "{}", a.len());
        assert_ne!(*a, *b);
        assert_eq!(hash(&a).len(), 32);
        assert_ne!(hash(&a), hash(&b));
    }
}
