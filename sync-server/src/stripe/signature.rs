//! Stripe webhook signatures: `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…]`, where
//! each `v1` is HMAC-SHA256 over `"{t}.{raw body}"` keyed with the endpoint's webhook secret.
//!
//! Guarantees:
//! - Each candidate is compared with `hmac`'s `verify_slice` (constant time); any one matching
//!   passes (Stripe sends several while a secret is being rolled).
//! - A signed timestamp more than [`TOLERANCE_SECS`] away from now (either way) is refused, so a
//!   captured delivery cannot be replayed later.
//! - The header is bounded ([`HEADER_LEN_MAX`], [`SIGNATURES_MAX`]) and nothing about the secret
//!   or the expected signature appears in an error.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Largest accepted gap between the signed timestamp and now (seconds).
pub const TOLERANCE_SECS: i64 = 300;
/// Longest `Stripe-Signature` header read.
pub const HEADER_LEN_MAX: usize = 4_096;
/// Most `v1` signatures tried from one header.
pub const SIGNATURES_MAX: usize = 8;

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("no signature in the Stripe-Signature header matches the body")]
    NoMatch,
    #[error("the signed timestamp is {0} s away from now (at most {TOLERANCE_SECS} s allowed)")]
    Stale(i64),
}

/// Verifies `header` for `body` with `secret` at time `now` (unix seconds); returns the signed
/// timestamp.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secret: &[u8],
    now: i64,
) -> Result<i64, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    if header.len() > HEADER_LEN_MAX {
        return Err(SignatureError::Malformed("too long"));
    }
    let mut timestamp: Option<&str> = None;
    let mut candidates: Vec<[u8; 32]> = Vec::new();
    let mut offered = 0usize;
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed("an element is not key=value"))?;
        match key {
            "t" if timestamp.is_some() => {
                return Err(SignatureError::Malformed("more than one timestamp"));
            }
            "t" => timestamp = Some(value),
            "v1" => {
                offered += 1;
                if offered > SIGNATURES_MAX {
                    return Err(SignatureError::Malformed("too many signatures"));
                }
                let mut sig = [0u8; 32];
                // A candidate that is not 64 hex digits can never match: skip it.
                if hex::decode_to_slice(value, &mut sig).is_ok() {
                    candidates.push(sig);
                }
            }
            _ => {} // other schemes (v0) are ignored, as Stripe advises
        }
    }
    let timestamp_text = timestamp.ok_or(SignatureError::Malformed("no timestamp"))?;
    let timestamp: i64 = timestamp_text
        .parse()
        .map_err(|_| SignatureError::Malformed("the timestamp is not a number"))?;
    let mut mac =
        HmacSha256::new_from_slice(secret).map_err(|_| SignatureError::Malformed("key"))?;
    mac.update(timestamp_text.as_bytes());
    mac.update(b".");
    mac.update(body);
    let matched = candidates
        .iter()
        .any(|sig| mac.clone().verify_slice(sig).is_ok());
    if !matched {
        return Err(SignatureError::NoMatch);
    }
    let age = now.saturating_sub(timestamp);
    if age.abs() > TOLERANCE_SECS {
        return Err(SignatureError::Stale(age));
    }
    Ok(timestamp)
}

/// The `Stripe-Signature` header Stripe would send for `body` at `timestamp` (for tests and
/// tools that play Stripe).
pub fn header_for(body: &[u8], secret: &[u8], timestamp: i64) -> String {
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return format!("t={timestamp}"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test";

    #[test]
    fn a_valid_signature_passes_and_anything_else_is_refused() {
        let body = br#"{"id":"evt_1"}"#;
        let now = 1_700_000_000;
        let header = header_for(body, SECRET, now);
        assert_eq!(verify(Some(&header), body, SECRET, now), Ok(now));
        // Any matching v1 among several passes.
        let rolled = format!(
            "{},v1={}",
            header.replace("v1=", "v1=00"),
            &header[header.find("v1=").unwrap() + 3..]
        );
        assert_eq!(verify(Some(&rolled), body, SECRET, now + 10), Ok(now));
        assert_eq!(
            verify(None, body, SECRET, now),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(Some(&header), b"{}", SECRET, now),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(Some(&header), body, b"other", now),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(Some(&header), body, SECRET, now + TOLERANCE_SECS + 1),
            Err(SignatureError::Stale(TOLERANCE_SECS + 1))
        );
        assert_eq!(
            verify(Some(&header), body, SECRET, now + TOLERANCE_SECS),
            Ok(now)
        );
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "garbage", "t=1,t=2,v1=00"] {
            assert!(verify(Some(bad), body, SECRET, now).is_err(), "{bad:?}");
        }
    }
}
