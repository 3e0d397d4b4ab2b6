//! The BYOK vault end to end: wrong keys, moved ciphertexts, rotation, no plaintext on disk.
