//! libFuzzer-free mutation fuzzer for `neurostream::pipeline::parse_str`: random UTF-8-preserving
//! mutations of seed pipeline files (insert dictionary tokens / random chars incl. multi-byte,
//! delete / duplicate / splice ranges, truncate), each parsed under catch_unwind. Panicking
//! inputs are saved to OUT/crash-<n>.toml.
//! Usage: mutate-parse SECONDS OUT_DIR SEED_FILE...
//! Fallback for `pipeline_parse_str` when the ASan build of the whole crate is too slow: it
//! reuses ordinary debug-profile artifacts. No coverage feedback (blind mutation).
use std::panic;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng, rngs::StdRng};

const TOKENS: &[&str] = &[
    "[pipeline]", "[stages.", "[[stages.", "]", "[", "name = ", "seed = ", "description = ", "run_dir = ",
    "channel_rows = ", "channel_bytes = ", "row_group_rows = ", "kind = ", "inputs = ", "paths = ", "path = ",
    "where = ", "columns = ", "drop = ", "\"source.parquet\"", "\"transform.filter\"", "\"transform.select\"",
    "\"sink.csv\"", "\"sink.parquet\"", "\"features.spikes\"", "\"features.sweep\"", "\"features.bursts\"",
    "\"ingest.abf\"", "\"ingest.spike_times\"", "\"simulate.glif\"", "\"simulate.stg\"",
    "\"../fixtures/core/mtg_spikecounts_*.parquet\"", "spike_count", "stimulus_amplitude", " >= ", " > ",
    " == ", " && ", " || ", "(", ")", "!", "\"\"\"", "'''", "{ ", " }", "= [", ", ", "\n", "\"", "'", "=",
    ".", "µ", "é", "日本", "🦀", "\u{0}", "\t", "\r\n", "inf", "nan", "-0", "1e999", "-1", "0",
    "9223372036854775807", "-9223372036854775808", "18446744073709551616", "1979-05-27T07:32:00Z", "true",
    "#", "\\u00b5", "\\", "[]", "{}", "x", "a.b.c",
];

fn boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn mutate(rng: &mut StdRng, text: &mut String, seeds: &[String]) {
    let n_ops = rng.random_range(1..=6);
    for _ in 0..n_ops {
        let len = text.len();
        let at = boundary(text, rng.random_range(0..=len));
        match rng.random_range(0..8) {
            0 | 1 => text.insert_str(at, TOKENS[rng.random_range(0..TOKENS.len())]),
            2 => {
                let c = match rng.random_range(0..3) {
                    0 => char::from(rng.random_range(0x20u8..0x7f)),
                    1 => char::from(rng.random_range(0u8..0x20)),
                    _ => char::from_u32(rng.random_range(0x80u32..0x11_0000)).unwrap_or('\u{fffd}'),
                };
                text.insert(at, c);
            }
            3 => {
                let end = boundary(text, (at + rng.random_range(1..40)).min(len));
                text.replace_range(at..end, "");
            }
            4 => {
                let end = boundary(text, (at + rng.random_range(1..80)).min(len));
                let piece = text[at..end].to_string();
                let to = boundary(text, rng.random_range(0..=len));
                text.insert_str(to, &piece);
            }
            5 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                let a = boundary(other, rng.random_range(0..=other.len()));
                let b = boundary(other, (a + rng.random_range(1..200)).min(other.len()));
                text.insert_str(at, &other[a..b]);
            }
            6 => {
                // Replace a digit run or quoted value with another token.
                let end = boundary(text, (at + rng.random_range(1..8)).min(len));
                text.replace_range(at..end, TOKENS[rng.random_range(0..TOKENS.len())]);
            }
            _ => text.truncate(at),
        }
        if text.len() > 64 * 1024 {
            text.truncate(boundary(text, 64 * 1024));
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args[1].parse().unwrap();
    let out = Path::new(&args[2]);
    std::fs::create_dir_all(out).unwrap();
    let seeds: Vec<String> = args[3..].iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/malformed/fuzz.toml"));
    panic::set_hook(Box::new(|_| {}));
    let mut rng = StdRng::seed_from_u64(0x5eed_f022);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut execs, mut crashes, mut ok, mut slowest) = (0u64, 0u64, 0u64, Duration::ZERO);
    let mut messages = std::collections::BTreeMap::<String, usize>::new();
    while Instant::now() < deadline {
        let mut text = seeds[rng.random_range(0..seeds.len())].clone();
        mutate(&mut rng, &mut text, &seeds);
        let t0 = Instant::now();
        let result = panic::catch_unwind(|| match neurostream::pipeline::parse_str(path, &text) {
            Ok(_) => true,
            Err(d) => {
                let _ = format!("{d}");
                false
            }
        });
        slowest = slowest.max(t0.elapsed());
        execs += 1;
        match result {
            Ok(true) => ok += 1,
            Ok(false) => {}
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let count = messages.entry(msg.clone()).or_insert(0);
                *count += 1;
                if *count <= 3 {
                    crashes += 1;
                    std::fs::write(out.join(format!("crash-{crashes}.toml")), &text).unwrap();
                    eprintln!("CRASH {crashes}: {msg}");
                }
            }
        }
        if execs % 20000 == 0 {
            eprintln!("#{execs} ok={ok} crashes={crashes} slowest={slowest:?}");
        }
    }
    println!("executions={execs} accepted={ok} distinct_panics={} slowest={slowest:?}", messages.len());
    for (m, c) in &messages {
        println!("panic x{c}: {m}");
    }
}
