"""Writes small ABF2 seed files for the abf_from_bytes fuzz target.

The two fixture recordings (tests/fixtures/abf/*.abf, ~2 MB each) are too large to mutate
quickly, so each seed keeps a fixture's header sections (first 6656 bytes: protocol, ADC,
DAC, epoch tables, strings) verbatim and replaces the data: 3 sweeps, every 100th sample of
the first 3 sweeps, epoch durations divided by 100 so the epoch table still fits the sweep,
and a matching synch array. Variants change one header field each (epoch shape, pulse
period/width, inter-episode level, gap-free mode, float32 data) so the fuzzer starts from
inputs that reach every branch of the command-waveform renderer.

Usage: python3 make_abf_seeds.py OUT_DIR   (run from the repository's fuzz/ directory)
"""
import os
import struct
import sys

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "abf")
HEADER_END = 6656
SWEEPS = 3
DECIMATE = 100


def shrink(data, fmt=0):
    header = bytearray(data[:HEADER_END])
    _, _, count = struct.unpack_from("<IIq", data, 236)
    episodes = struct.unpack_from("<I", data, 12)[0]
    per_sweep = count // episodes
    samples = []
    for s in range(SWEEPS):
        base = HEADER_END + 2 * s * per_sweep
        for i in range(0, per_sweep, DECIMATE):
            samples.append(struct.unpack_from("<h", data, base + 2 * i)[0])
    n_per_sweep = per_sweep // DECIMATE
    if fmt == 0:
        body = struct.pack("<%dh" % len(samples), *samples)
        entry = 2
    else:
        body = struct.pack("<%df" % len(samples), *[v * 0.01 for v in samples])
        entry = 4
    struct.pack_into("<I", header, 12, SWEEPS)
    struct.pack_into("<H", header, 30, fmt)
    struct.pack_into("<IIq", header, 236, HEADER_END // 512, entry, len(samples))
    # Epoch durations / 100 so the epochs fit the shortened sweep.
    block, size, n_epochs = struct.unpack_from("<IIq", header, 156)
    for e in range(n_epochs):
        o = block * 512 + e * size
        d0, dinc = struct.unpack_from("<ii", header, o + 14)
        struct.pack_into("<ii", header, o + 14, d0 // DECIMATE, dinc // DECIMATE)
    out = bytearray(header) + body
    out += b"\0" * (-len(out) % 512)
    synch_block = len(out) // 512
    for s in range(SWEEPS):
        out += struct.pack("<ii", s * n_per_sweep, n_per_sweep * (1 if fmt == 0 else 1))
    struct.pack_into("<IIq", out, 316, synch_block, 8, SWEEPS)
    return out


def epoch_variant(data, kind, period, width, inter_episode=0, gap_free=False):
    out = bytearray(data)
    block, size, n_epochs = struct.unpack_from("<IIq", out, 156)
    for e in range(1, n_epochs, 2):
        o = block * 512 + e * size
        struct.pack_into("<h", out, o + 4, kind)
        struct.pack_into("<ii", out, o + 22, period, width)
    dblock = struct.unpack_from("<I", out, 108)[0]
    struct.pack_into("<h", out, dblock * 512 + 44, inter_episode)
    if gap_free:
        struct.pack_into("<h", out, 512, 3)
    return out


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    for name in sorted(os.listdir(FIXTURES)):
        if not name.endswith(".abf"):
            continue
        data = open(os.path.join(FIXTURES, name), "rb").read()
        stem = name[:-4]
        small = shrink(data)
        seeds = {
            "step": small,
            "float32": shrink(data, fmt=1),
            "ramp": epoch_variant(small, 2, 0, 0),
            "pulse": epoch_variant(small, 3, 25, 10),
            "triangle": epoch_variant(small, 4, 20, 8),
            "cosine": epoch_variant(small, 5, 30, 0),
            "biphasic": epoch_variant(small, 7, 16, 9, inter_episode=1),
            "unknown_kind": epoch_variant(small, 6, 0, 0),
            "gap_free": epoch_variant(small, 1, 0, 0, gap_free=True),
        }
        for tag, blob in seeds.items():
            with open(os.path.join(out_dir, f"{stem}_{tag}.abf"), "wb") as f:
                f.write(blob)


if __name__ == "__main__":
    main()
