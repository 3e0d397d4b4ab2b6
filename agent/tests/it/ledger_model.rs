//! Property tests: random operation sequences against a small reference model of the ledger.
