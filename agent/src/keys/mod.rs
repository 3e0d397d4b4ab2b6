//! The BYOK vault: users' own provider keys, encrypted at rest with AES-256-GCM.
