//! The vault's cryptography: AES-256-GCM envelopes bound to the row they belong to, and the master
//! key type. No I/O here; where the master key comes from is `master.rs`, what is stored where is
//! `vault.rs`.
//!
//! # Envelope (what `user_provider_keys.encrypted_key` holds)
//!
//! ```text
//! offset  length  field
//! 0       1       version, 0x01
//! 1       12      nonce, fresh from the OS random generator for every seal
//! 13      n       ciphertext of the n-byte provider key (AES-256-GCM, CTR mode: same length)
//! 13+n    16      GCM authentication tag
//! ```
//!
//! So an envelope is `29 + n` bytes; anything shorter than 29 bytes is truncated.
//!
//! # Associated data
//!
//! Each envelope is authenticated together with the row it was sealed for:
//!
//! ```text
//! b"tollgate.byok.v1"
//! ‖ u32 big-endian length ‖ user_id bytes
//! ‖ u32 big-endian length ‖ provider bytes (the stored text, e.g. "openai")
//! ‖ u32 big-endian length ‖ key_name bytes
//! ```
//!
//! The length prefixes make the encoding injective (`("ab", "c")` and `("a", "bc")` differ), so an
//! envelope copied to another user's row, another provider or another key name fails to open.
//!
//! # Invariants
//!
//! - A nonce is never chosen twice on purpose: 96 random bits per seal. With one master key the
//!   chance of a repeat stays negligible far beyond the number of keys a host will ever store
//!   (NIST's limit for random nonces is 2^32 seals per key).
//! - Opening fails with one undistinguished error ([`CryptoError::Decrypt`]) for a wrong key,
//!   altered bytes or a moved envelope: the error tells an attacker nothing. Only the framing
//!   (version byte, length) has errors of its own, since it is not secret.
//! - [`MasterKey`] zeroizes its bytes on drop, lives on the heap (moving it does not copy the key),
//!   prints as `MasterKey(<redacted>)` and has no `Display`, `Serialize` or `Clone`.
//! - Plaintext returned by [`open`] is [`Zeroizing`]; its buffer is wiped on drop, also when the
//!   tag check fails (GCM decrypts before comparing tags).

use std::fmt;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// The only envelope version this code writes and reads.
pub const ENVELOPE_VERSION: u8 = 0x01;
/// AES-GCM's standard nonce size.
pub const NONCE_LEN: usize = 12;
/// GCM tag size (full length; never truncated).
pub const TAG_LEN: usize = 16;
/// The smallest envelope: version, nonce and tag around an empty plaintext.
pub const ENVELOPE_LEN_MIN: usize = 1 + NONCE_LEN + TAG_LEN;
/// AES-256: a 32-byte key.
pub const MASTER_KEY_LEN: usize = 32;
/// Largest plaintext [`seal`] accepts: far above any provider key (the vault stops at 4 KiB).
pub const PLAINTEXT_LEN_MAX: usize = 64 * 1024;
/// Largest field of a [`Binding`], in bytes (user ids stop at 128, key names at 64 characters).
pub const BINDING_FIELD_LEN_MAX: usize = 1024;

/// Domain separation for the associated data.
const AAD_DOMAIN: &[u8] = b"tollgate.byok.v1";
/// Domain separation for the key id, so it is no other hash of the key.
const KEY_ID_DOMAIN: &[u8] = b"tollgate.master-key-id.v1";
/// Bytes of SHA-256 kept in a key id (64 bits: enough to tell keys apart, says nothing of the key).
const KEY_ID_BYTES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Wrong key, altered bytes or a moved envelope: deliberately one error.
    #[error(
        "cannot decrypt the stored key: wrong master key, or the stored key was altered or moved"
    )]
    Decrypt,
    #[error(
        "the stored key has envelope version {0:#04x}; this tollgate reads only version 0x01 (a newer tollgate wrote it?)"
    )]
    UnknownVersion(u8),
    #[error(
        "the stored key is {len} bytes, shorter than the smallest envelope ({ENVELOPE_LEN_MIN} bytes)"
    )]
    Truncated { len: usize },
    #[error("the {field} a key is bound to is {len} bytes, the limit is {BINDING_FIELD_LEN_MAX}")]
    BindingTooLong { field: &'static str, len: usize },
    #[error("the key to encrypt is {len} bytes, the limit is {PLAINTEXT_LEN_MAX}")]
    PlaintextTooLong { len: usize },
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
    /// AES-GCM refuses only plaintexts beyond 2^36 bytes, which [`PLAINTEXT_LEN_MAX`] rules out.
    #[error("encryption failed")]
    Encrypt,
}

/// The key every stored provider key is encrypted under.
pub struct MasterKey {
    /// Boxed so that moving a `MasterKey` moves a pointer, not a copy of the key left behind.
    bytes: Box<[u8; MASTER_KEY_LEN]>,
}

impl MasterKey {
    /// A fresh key from the operating system's random generator.
    pub fn generate() -> Result<MasterKey, CryptoError> {
        let mut bytes = Box::new([0u8; MASTER_KEY_LEN]);
        getrandom::fill(&mut bytes[..]).map_err(CryptoError::Random)?;
        Ok(MasterKey { bytes })
    }

    /// A key from exactly [`MASTER_KEY_LEN`] bytes; `None` for any other length. The caller
    /// remains responsible for wiping `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Option<MasterKey> {
        if bytes.len() != MASTER_KEY_LEN {
            return None;
        }
        let mut key = Box::new([0u8; MASTER_KEY_LEN]);
        key.copy_from_slice(bytes);
        Some(MasterKey { bytes: key })
    }

    /// A short public id of the key: the first 8 bytes of
    /// `SHA-256("tollgate.master-key-id.v1" ‖ key)`, as 16 hex digits. Stored in `vault_meta` to
    /// tell "wrong master key" apart from a damaged row. Safe to print and log.
    pub fn key_id(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(KEY_ID_DOMAIN);
        hasher.update(&self.bytes[..]);
        let digest = hasher.finalize();
        hex::encode(&digest[..KEY_ID_BYTES])
    }

    /// The raw key, for encoding it into the key file. Keep the borrow short.
    pub(crate) fn expose(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.bytes
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&*self.bytes).into())
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// What an envelope is bound to: the row's user, provider and key name, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding<'a> {
    pub user_id: &'a str,
    /// The provider's stored text (`Provider::as_str`), e.g. `"openai"`.
    pub provider: &'a str,
    pub key_name: &'a str,
}

impl<'a> Binding<'a> {
    pub fn new(user_id: &'a str, provider: &'a str, key_name: &'a str) -> Binding<'a> {
        Binding {
            user_id,
            provider,
            key_name,
        }
    }

    /// The associated data (see the module doc).
    fn associated_data(&self) -> Result<Vec<u8>, CryptoError> {
        let fields = [
            ("user id", self.user_id),
            ("provider", self.provider),
            ("key name", self.key_name),
        ];
        let mut aad = Vec::with_capacity(
            AAD_DOMAIN.len() + fields.iter().map(|(_, v)| 4 + v.len()).sum::<usize>(),
        );
        aad.extend_from_slice(AAD_DOMAIN);
        for (field, value) in fields {
            let len = u32::try_from(value.len())
                .ok()
                .filter(|_| value.len() <= BINDING_FIELD_LEN_MAX)
                .ok_or(CryptoError::BindingTooLong {
                    field,
                    len: value.len(),
                })?;
            aad.extend_from_slice(&len.to_be_bytes());
            aad.extend_from_slice(value.as_bytes());
        }
        Ok(aad)
    }
}

/// Encrypts `plaintext` under `master` for the row `binding` names, with a fresh random nonce.
pub fn seal(
    master: &MasterKey,
    binding: &Binding<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if plaintext.len() > PLAINTEXT_LEN_MAX {
        return Err(CryptoError::PlaintextTooLong {
            len: plaintext.len(),
        });
    }
    let aad = binding.associated_data()?;
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(CryptoError::Random)?;
    // Sized up front so the buffer never reallocates while it holds plaintext.
    let mut envelope = Vec::with_capacity(ENVELOPE_LEN_MIN + plaintext.len());
    envelope.push(ENVELOPE_VERSION);
    envelope.extend_from_slice(&nonce);
    envelope.extend_from_slice(plaintext);
    let body = 1 + NONCE_LEN;
    let tag = master
        .cipher()
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut envelope[body..])
        .map_err(|_| CryptoError::Encrypt)?;
    envelope.extend_from_slice(&tag);
    Ok(envelope)
}

/// Decrypts an envelope made by [`seal`] with the same key and binding.
pub fn open(
    master: &MasterKey,
    binding: &Binding<'_>,
    envelope: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    match envelope.first() {
        None => return Err(CryptoError::Truncated { len: 0 }),
        Some(&ENVELOPE_VERSION) => {}
        Some(&other) => return Err(CryptoError::UnknownVersion(other)),
    }
    if envelope.len() < ENVELOPE_LEN_MIN {
        return Err(CryptoError::Truncated {
            len: envelope.len(),
        });
    }
    let aad = binding.associated_data()?;
    let nonce = &envelope[1..1 + NONCE_LEN];
    let (ciphertext, tag) = envelope[1 + NONCE_LEN..].split_at(envelope.len() - ENVELOPE_LEN_MIN);
    let mut plaintext = Zeroizing::new(ciphertext.to_vec());
    master
        .cipher()
        .decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            &aad,
            &mut plaintext,
            Tag::from_slice(tag),
        )
        .map_err(|_| CryptoError::Decrypt)?;
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_slice(&[byte; MASTER_KEY_LEN]).unwrap()
    }

    const ALICE: Binding<'static> = Binding {
        user_id: "alice",
        provider: "openai",
        key_name: "default",
    };

    #[test]
    fn round_trip() {
        let master = MasterKey::generate().unwrap();
        let envelope = seal(&master, &ALICE, b"sk-test-1234").unwrap();
        assert_eq!(envelope.len(), ENVELOPE_LEN_MIN + 12);
        assert_eq!(envelope[0], ENVELOPE_VERSION);
        assert_eq!(
            &open(&master, &ALICE, &envelope).unwrap()[..],
            b"sk-test-1234"
        );
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let master = key(1);
        let envelope = seal(&master, &ALICE, b"").unwrap();
        assert_eq!(envelope.len(), ENVELOPE_LEN_MIN);
        assert!(open(&master, &ALICE, &envelope).unwrap().is_empty());
    }

    #[test]
    fn wrong_key_fails() {
        let envelope = seal(&key(1), &ALICE, b"secret").unwrap();
        assert!(matches!(
            open(&key(2), &ALICE, &envelope),
            Err(CryptoError::Decrypt)
        ));
    }

    #[test]
    fn other_binding_fails() {
        let master = key(1);
        let envelope = seal(&master, &ALICE, b"secret").unwrap();
        for other in [
            Binding::new("bob", "openai", "default"),
            Binding::new("alice", "anthropic", "default"),
            Binding::new("alice", "openai", "prod"),
        ] {
            assert!(
                matches!(open(&master, &other, &envelope), Err(CryptoError::Decrypt)),
                "{other:?}"
            );
        }
    }

    #[test]
    fn associated_data_is_injective_across_field_boundaries() {
        let a = Binding::new("ab", "c", "d").associated_data().unwrap();
        let b = Binding::new("a", "bc", "d").associated_data().unwrap();
        assert_ne!(a, b);
        let master = key(1);
        let envelope = seal(&master, &Binding::new("ab", "c", "d"), b"x").unwrap();
        assert!(open(&master, &Binding::new("a", "bc", "d"), &envelope).is_err());
    }

    #[test]
    fn any_flipped_byte_fails() {
        let master = key(1);
        let envelope = seal(&master, &ALICE, b"sk-flip-me").unwrap();
        for i in 0..envelope.len() {
            let mut altered = envelope.clone();
            altered[i] ^= 0x01;
            let err = open(&master, &ALICE, &altered).unwrap_err();
            if i == 0 {
                assert!(matches!(err, CryptoError::UnknownVersion(0x00)), "{err:?}");
            } else {
                assert!(matches!(err, CryptoError::Decrypt), "byte {i}: {err:?}");
            }
        }
    }

    #[test]
    fn truncated_and_unknown_versions_are_named() {
        let master = key(1);
        let envelope = seal(&master, &ALICE, b"secret").unwrap();
        assert!(matches!(
            open(&master, &ALICE, &[]),
            Err(CryptoError::Truncated { len: 0 })
        ));
        assert!(matches!(
            open(&master, &ALICE, &envelope[..ENVELOPE_LEN_MIN - 1]),
            Err(CryptoError::Truncated { len: 28 })
        ));
        // Cutting the tail keeps the framing valid but breaks the tag.
        assert!(matches!(
            open(&master, &ALICE, &envelope[..envelope.len() - 1]),
            Err(CryptoError::Decrypt)
        ));
        let mut v2 = envelope.clone();
        v2[0] = 0x02;
        let err = open(&master, &ALICE, &v2).unwrap_err();
        assert!(matches!(err, CryptoError::UnknownVersion(0x02)));
        assert!(err.to_string().contains("0x02"), "{err}");
    }

    #[test]
    fn two_seals_differ() {
        let master = key(1);
        let a = seal(&master, &ALICE, b"same").unwrap();
        let b = seal(&master, &ALICE, b"same").unwrap();
        assert_ne!(a, b);
        assert_ne!(a[1..1 + NONCE_LEN], b[1..1 + NONCE_LEN]);
    }

    #[test]
    fn limits_are_enforced() {
        let master = key(1);
        let big = vec![b'a'; PLAINTEXT_LEN_MAX + 1];
        assert!(matches!(
            seal(&master, &ALICE, &big),
            Err(CryptoError::PlaintextTooLong { .. })
        ));
        let long = "u".repeat(BINDING_FIELD_LEN_MAX + 1);
        assert!(matches!(
            seal(&master, &Binding::new(&long, "openai", "k"), b"x"),
            Err(CryptoError::BindingTooLong {
                field: "user id",
                ..
            })
        ));
    }

    #[test]
    fn debug_is_redacted_and_key_id_is_stable() {
        let master = key(7);
        assert_eq!(format!("{master:?}"), "MasterKey(<redacted>)");
        assert_eq!(
            format!("{:?}", Some(&master)),
            "Some(MasterKey(<redacted>))"
        );
        let id = master.key_id();
        assert_eq!(id.len(), 2 * KEY_ID_BYTES);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(id, key(7).key_id());
        assert_ne!(id, key(8).key_id());
        assert!(MasterKey::from_slice(&[0; 31]).is_none());
        assert!(MasterKey::from_slice(&[0; 33]).is_none());
    }

    #[test]
    fn the_decrypt_error_says_nothing_specific() {
        let envelope = seal(&key(1), &ALICE, b"sk-secret-value").unwrap();
        let message = open(&key(2), &ALICE, &envelope).unwrap_err().to_string();
        assert_eq!(
            message,
            "cannot decrypt the stored key: wrong master key, or the stored key was altered or moved"
        );
    }

    proptest! {
        #[test]
        fn seal_open_round_trips(
            key_bytes in proptest::array::uniform32(any::<u8>()),
            plaintext in proptest::collection::vec(any::<u8>(), 0..600),
            user in "\\PC{0,40}",
            provider in "[a-z]{0,12}",
            name in "\\PC{0,64}",
            other_user in "\\PC{0,40}",
        ) {
            let master = MasterKey::from_slice(&key_bytes).unwrap();
            let binding = Binding::new(&user, &provider, &name);
            let envelope = seal(&master, &binding, &plaintext).unwrap();
            prop_assert_eq!(envelope.len(), ENVELOPE_LEN_MIN + plaintext.len());
            prop_assert_eq!(&open(&master, &binding, &envelope).unwrap()[..], &plaintext[..]);
            let moved = Binding::new(&other_user, &provider, &name);
            prop_assert_eq!(open(&master, &moved, &envelope).is_ok(), other_user == user);
        }
    }
}
