//! The Chat stream reader on arbitrary bytes (see `tollgate_fuzz_checks::stream`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::gateway::request::Wire;

fuzz_target!(|data: &[u8]| tollgate_fuzz_checks::stream(Wire::Chat, data));
