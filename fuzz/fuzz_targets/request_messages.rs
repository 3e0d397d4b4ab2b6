//! Request-body validation of the Messages endpoint on arbitrary bytes (see
//! `tollgate_fuzz_checks::request`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::gateway::request::Endpoint;

fuzz_target!(|data: &[u8]| tollgate_fuzz_checks::request(Endpoint::Messages, data));
