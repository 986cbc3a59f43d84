//! Bounded memory on a one-hour recording: a 20 kHz gap-free ABF2 file of 72,000,000 samples
//! (144 MB of int16, 576 MB as f64) streams through `ingest.abf` (chunk_s = 10) and
//! `features.spikes` in the real binary, measured with `/usr/bin/time -v`: peak RSS must stay
//! under 500 MB, and the spike count must be the count of one tile times the number of tiles.
//!
//! The recording is real voltage tiled: one 3 s sweep of the regular-spiking fixture recording
//! (tests/fixtures/abf/171116sh_0018.abf, pyABF test data), read with the crate's ABF reader
//! (checked sample by sample against pyABF in src/formats/abf.rs), repeated 1200 times. The file
//! is written by the small ABF2 writer below, streaming (one tile in memory). The expected count
//! comes from an unchunked run of the same pipeline on a one-tile file written the same way, so the
//! assertion checks that chunking an hour neither loses nor duplicates spikes.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use neurostream::formats::abf::AbfFile;

use crate::support::{bin, fixture, run_workspace};

const RATE_HZ: u32 = 20_000;
const TILE_SAMPLES: usize = 60_000;
/// One hour: 3600 s x 20 kHz = 72 M samples = 1200 tiles of 3 s.
const TILES: usize = 1200;
/// Stored counts are scaled by fADCRange / lADCResolution = 327.68 / 32768 = 0.01 mV per count.
const MV_PER_COUNT: f32 = 0.01;

/// The fixture sweep used as the tile: sweep 12 of 171116sh_0018 (a +200 pA step: a train of
/// spikes), as int16 counts at 0.01 mV.
fn tile_counts() -> Vec<i16> {
    let path = fixture("abf/171116sh_0018.abf");
    let abf = AbfFile::open(&path).unwrap();
    assert_eq!((abf.sampling_rate_hz(), abf.samples_per_sweep()), (RATE_HZ, TILE_SAMPLES));
    abf.sweep_adc(0, 12).unwrap().iter().map(|&v| (v / MV_PER_COUNT).round() as i16).collect()
}

fn put(buf: &mut [u8], offset: usize, bytes: &[u8]) {
    buf[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// Writes a gap-free ABF2 file (one int16 ADC channel "IN 0" in mV, DAC 0 in pA without a
/// waveform, holding 0 pA) holding `tiles` repetitions of `tile`, streaming. Only the header fields
/// the reader uses are set (layout: the ABF2 section map of the Axon SDK / pyABF's
/// `abfHeader.py`); everything is little-endian, sections start on 512-byte blocks.
fn write_gap_free_abf(path: &Path, tile: &[i16], tiles: usize) {
    const BLOCK: usize = 512;
    let (protocol_block, adc_block, dac_block, strings_block, data_block) = (1u32, 2u32, 3u32, 4u32, 5u32);
    let mut head = vec![0u8; data_block as usize * BLOCK];
    put(&mut head, 0, b"ABF2");
    put(&mut head, 4, &[0, 0, 6, 2]); // version 2.6.0.0
    put(&mut head, 12, &0u32.to_le_bytes()); // lActualEpisodes
    put(&mut head, 30, &0u16.to_le_bytes()); // nDataFormat: int16
    put(&mut head, 72, &2u32.to_le_bytes()); // uProtocolPathIndex -> "None"
    let section = |head: &mut Vec<u8>, map: usize, block: u32, bytes: u32, count: i64| {
        put(head, map, &block.to_le_bytes());
        put(head, map + 4, &bytes.to_le_bytes());
        put(head, map + 8, &count.to_le_bytes());
    };
    section(&mut head, 76, protocol_block, 512, 1);
    section(&mut head, 92, adc_block, 128, 1);
    section(&mut head, 108, dac_block, 256, 1);
    // The entry holds exactly the strings: NUL padding would move the last double NUL.
    const STRINGS: &[u8] = b"\0\0Clampex\0None\0IN 0\0mV\0Cmd 0\0pA";
    section(&mut head, 220, strings_block, STRINGS.len() as u32, 1);
    section(&mut head, 236, data_block, 2, (tile.len() * tiles) as i64);
    // Protocol: gap-free, 50 us per sample, ADC range / resolution.
    let p = protocol_block as usize * BLOCK;
    put(&mut head, p, &3i16.to_le_bytes());
    put(&mut head, p + 2, &(1e6f32 / RATE_HZ as f32).to_le_bytes());
    put(&mut head, p + 110, &327.68f32.to_le_bytes());
    put(&mut head, p + 118, &32768i32.to_le_bytes());
    // ADC 0: unit gains, no offsets, name "IN 0" (string 3), units "mV" (string 4).
    let a = adc_block as usize * BLOCK;
    for (offset, value) in [(28, 1f32), (40, 1.0), (48, 1.0)] {
        put(&mut head, a + offset, &value.to_le_bytes());
    }
    put(&mut head, a + 74, &3i32.to_le_bytes());
    put(&mut head, a + 78, &4i32.to_le_bytes());
    // DAC 0: "Cmd 0" (string 5) in "pA" (string 6), waveform off.
    let d = dac_block as usize * BLOCK;
    put(&mut head, d + 24, &5i32.to_le_bytes());
    put(&mut head, d + 28, &6i32.to_le_bytes());
    // Strings: indexed from the last double NUL, first piece dropped (pyABF's StringsSection).
    put(&mut head, strings_block as usize * BLOCK, STRINGS);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    out.write_all(&head).unwrap();
    let tile_bytes: Vec<u8> = tile.iter().flat_map(|c| c.to_le_bytes()).collect();
    for _ in 0..tiles {
        out.write_all(&tile_bytes).unwrap();
    }
    out.flush().unwrap();
}

fn pipeline(chunk: &str) -> String {
    format!(
        r#"
[pipeline]
name = "hour"

[stages.sweeps]
kind = "ingest.abf"
paths = ["rec.abf"]
{chunk}

[stages.spikes]
kind = "features.spikes"
inputs = ["sweeps"]
filter_khz = 5

[stages.csv]
kind = "sink.csv"
inputs = ["spikes"]
path = "out/spikes.csv"
"#
    )
}

/// Spike rows in the CSV (lines minus the header).
fn spike_count(dir: &Path) -> usize {
    let text = std::fs::read_to_string(dir.join("out/spikes.csv")).unwrap();
    text.lines().count() - 1
}

#[test]
fn one_hour_gap_free_recording_streams_in_bounded_memory() {
    let tile = tile_counts();

    // One tile, whole sweep: the expected spikes per tile.
    let one = tempfile::tempdir().unwrap();
    write_gap_free_abf(&one.path().join("rec.abf"), &tile, 1);
    std::fs::write(one.path().join("p.toml"), pipeline("")).unwrap();
    let out = run_workspace(one.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let per_tile = spike_count(one.path());
    assert!(per_tile >= 5, "the tile should hold a spike train, found {per_tile} spikes");

    // The hour, in 10 s chunks, under /usr/bin/time -v.
    let hour = tempfile::tempdir().unwrap();
    let file = hour.path().join("rec.abf");
    write_gap_free_abf(&file, &tile, TILES);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 5 * 512 + 2 * 72_000_000);
    std::fs::write(hour.path().join("p.toml"), pipeline("chunk_s = 10")).unwrap();
    let started = std::time::Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-v", bin(), "run", "p.toml"])
        .current_dir(hour.path())
        .output()
        .expect("/usr/bin/time must be installed (Debian package `time`; .ci/run installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let rss_kb: u64 = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .unwrap_or_else(|| panic!("no peak RSS in /usr/bin/time output:\n{stderr}"))
        .trim()
        .parse()
        .unwrap();
    eprintln!("{stderr}");
    let count = spike_count(hour.path());
    eprintln!(
        "one hour (72 M samples): peak RSS {:.1} MB, {count} spikes ({per_tile} per tile), wall {:.1} s",
        rss_kb as f64 * 1024.0 / 1e6,
        started.elapsed().as_secs_f64()
    );
    assert!(rss_kb * 1024 < 500_000_000, "peak RSS {rss_kb} kB is not under 500 MB");
    assert_eq!(count, per_tile * TILES, "spikes in the hour vs {per_tile} per tile x {TILES} tiles");
}
