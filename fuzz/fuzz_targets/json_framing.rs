//! Fuzz target: `medtune_formats::checks::json_framing` on arbitrary bytes (see fuzz/README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| medtune_formats::checks::json_framing(data));
