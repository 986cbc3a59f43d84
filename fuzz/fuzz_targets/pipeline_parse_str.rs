//! Fuzz target: `neurostream::pipeline::parse_str` must never panic on any UTF-8 text; it
//! returns a `Pipeline` or `Diagnostics`. Non-UTF-8 inputs are skipped (the parser takes &str).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Placed beside the malformed-pipeline corpus, so the seeds' relative input paths
    // (`../fixtures/core/*.parquet`) resolve and the schema checks run too.
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/malformed/fuzz.toml"));
    if let Err(diags) = neurostream::pipeline::parse_str(path, text) {
        // Rendering the diagnostics (spans into the text) must not panic either.
        let _ = format!("{diags}");
        let _ = format!("{diags:?}");
    }
});
