//! The API keys tollgate issues to users: their format, how one is drawn, and the hash that is
//! all anyone stores. Shared because both programs issue keys (the agent standalone, the server
//! for enrolled agents) and an agent must recognise a key the server made from its hash alone.
//!
//! Guarantees: a key is `tg_` and 43 base64url characters (32 random bytes from the OS), so a
//! fast hash is as strong as a slow one here — there is nothing to guess; the secret is built
//! in wiped-on-drop buffers that never reallocate; only [`hash`] of it is ever stored.

use base64::Engine;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// What every key starts with.
pub const KEY_TAG: &str = "tg_";
/// Random bytes in a key.
const KEY_BYTES: usize = 32;
/// Characters in a key: the tag and the bytes in unpadded base64.
pub const KEY_LEN: usize = KEY_TAG.len() + (KEY_BYTES * 4).div_ceil(3);
/// Characters of a key shown in listings (`tg_` and the first eight of the secret).
pub const PREFIX_LEN: usize = 11;
/// Longest key name.
pub const KEY_NAME_LEN_MAX: usize = 64;

/// The operating system gave no randomness.
#[derive(Debug, thiserror::Error)]
#[error("no randomness from the operating system: {0}")]
pub struct NoRandomness(String);

/// A fresh key, built in place in wiped-on-drop buffers: the random bytes are drawn straight into
/// one and encoded straight into the other, whose capacity is reserved up front so it never
/// reallocates and leaves a copy behind.
pub fn new_secret() -> Result<Zeroizing<String>, NoRandomness> {
    let mut raw = Zeroizing::new([0u8; KEY_BYTES]);
    getrandom::fill(raw.as_mut_slice()).map_err(|e| NoRandomness(e.to_string()))?;
    let mut secret = Zeroizing::new(String::with_capacity(KEY_LEN));
    let reserved = secret.capacity();
    secret.push_str(KEY_TAG);
    // encode_slice writes straight into a buffer we wipe (encode_string would pass the text
    // through an internal stack buffer that nobody wipes).
    let mut encoded = Zeroizing::new([0u8; 64]);
    let written = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode_slice(raw.as_slice(), encoded.as_mut_slice())
        .map_err(|e| NoRandomness(format!("encoding a key: {e}")))?;
    let text = std::str::from_utf8(&encoded[..written])
        .map_err(|e| NoRandomness(format!("encoding a key: {e}")))?;
    secret.push_str(text);
    debug_assert_eq!((secret.len(), secret.capacity()), (KEY_LEN, reserved));
    Ok(secret)
}

/// A fresh key id: `key_` and 16 hex digits.
pub fn new_key_id() -> Result<String, NoRandomness> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| NoRandomness(e.to_string()))?;
    Ok(format!("key_{}", hex::encode(bytes)))
}

/// The part of a key shown in listings.
pub fn prefix(secret: &str) -> String {
    secret.chars().take(PREFIX_LEN).collect()
}

/// The SHA-256 of a key: the only form stored, and the one that crosses the wire.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Checks a key name: 1 to [`KEY_NAME_LEN_MAX`] bytes, no control characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > KEY_NAME_LEN_MAX {
        return Err(format!("{name:?} must be 1 to {KEY_NAME_LEN_MAX} bytes"));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!("{name:?} contains the control character {c:?}"));
    }
    Ok(())
}

/// Checks a key id as the wire carries it: `key_` and 16 lower-case hex digits.
pub fn check_key_id(key_id: &str) -> Result<(), String> {
    let ok = key_id.strip_prefix("key_").is_some_and(|rest| {
        rest.len() == 16
            && rest
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{key_id:?} is not `key_` and 16 lower-case hex digits"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_has_its_shape_and_a_stable_hash() {
        let secret = new_secret().unwrap();
        assert_eq!(secret.len(), KEY_LEN);
        assert!(secret.starts_with(KEY_TAG));
        assert_eq!(prefix(&secret).len(), PREFIX_LEN);
        assert_ne!(*secret, *new_secret().unwrap());
        assert_eq!(
            hex::encode(hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        check_key_id(&new_key_id().unwrap()).unwrap();
        assert!(check_key_id("key_ABCDEF0123456789").is_err());
        assert!(check_name("").is_err() && check_name("a\nb").is_err() && check_name("ci").is_ok());
    }
}
