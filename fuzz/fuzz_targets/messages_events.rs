//! The Messages stream reader on arbitrary bytes (see `tollgate_fuzz::stream`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::gateway::request::Wire;

fuzz_target!(|data: &[u8]| tollgate_fuzz::stream(Wire::Messages, data));
