//! Where fixed windows and stimulus-locked epochs fall in a trace, in samples.
//!
//! Times are seconds from the start of the sweep. A row's trace may be a whole sweep or one
//! chunk of it (`ingest.abf` with `chunk_s`): then it starts at `trace_start_s` and only its
//! "core" [`chunk_start_s`, `chunk_end_s`) belongs to it, the rest being overlap with its
//! neighbours. To cut every window exactly once whatever the chunking, a window is cut by the row
//! whose core contains its anchor on the sweep's sample grid: the window start for fixed windows,
//! the event for epochs. Comparisons are made on sample indices, round(t·rate), so that two
//! neighbouring chunks (whose boundary is the same float) never both claim or both miss a window.
//!
//! A window that does not fit in its row's trace is either off the end of the sweep (skipped,
//! counted) or lost to chunking: its row's trace stops before the sweep does because the chunk
//! overlap is shorter than the window. The second is reported ([`Cuts::lost_s`]) so the stage can
//! fail the recording instead of silently emitting an incomplete set of windows.

/// One row's trace on the sweep's time axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceFrame {
    /// Samples in the trace.
    pub samples: usize,
    pub rate_hz: f64,
    /// Time of the first sample from the sweep start (0 for a whole sweep) [s].
    pub trace_start_s: f64,
    /// The part of the sweep this row is responsible for, [start, end) [s]; `None`: all of it.
    pub core_s: Option<(f64, f64)>,
}

/// One window cut from a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    /// Window number in the sweep (fixed windows) or event number in the row's event list.
    pub index: i64,
    /// First sample in the row's trace.
    pub start: usize,
    /// Time of that sample from the sweep start [s].
    pub start_s: f64,
    /// The event the epoch is locked to [s] (epochs only).
    pub event_s: Option<f64>,
}

/// The windows of one row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cuts {
    /// Window length in samples (the same for every window of the row).
    pub len: usize,
    pub cuts: Vec<Cut>,
    /// Windows of this row that run off the start or end of the sweep.
    pub skipped: usize,
    /// Anchors (s) of windows of this row that the chunk overlap is too short to hold.
    pub lost_s: Vec<f64>,
}

fn sample(t: f64, rate: f64) -> i64 {
    (t * rate).round() as i64
}

impl TraceFrame {
    fn first(&self) -> i64 {
        sample(self.trace_start_s, self.rate_hz)
    }
    fn end(&self) -> i64 {
        self.first() + self.samples as i64
    }
    /// The core as sample indices on the sweep grid.
    fn core(&self) -> (i64, i64) {
        match self.core_s {
            Some((a, b)) => (sample(a, self.rate_hz), sample(b, self.rate_hz)),
            None => (i64::MIN, i64::MAX),
        }
    }
    /// Places a window of `len` samples starting at sweep sample `g`, anchored at `anchor_s`.
    fn place(&self, out: &mut Cuts, index: i64, g: i64, anchor_s: f64, event_s: Option<f64>) {
        let (first, end) = (self.first(), self.end());
        if g >= first && g + out.len as i64 <= end {
            let start = (g - first) as usize;
            out.cuts.push(Cut { index, start, start_s: self.trace_start_s + start as f64 / self.rate_hz, event_s });
        } else if (g < first && first > 0) || (g + out.len as i64 > end && self.core_s.is_some() && end > self.core().1) {
            // The sweep goes on beyond this trace (it starts after the sweep start, or its
            // overlap reaches past its core): the window is lost to chunking.
            out.lost_s.push(anchor_s);
        } else {
            out.skipped += 1;
        }
    }
}

/// Windows of `length_s` every `step_s` from the sweep start (the k-th starts at round(k·step_s·
/// rate)), those whose start lies in the row's core; a window must fit entirely (the partial last
/// window of a sweep is skipped).
pub fn fixed_windows(frame: &TraceFrame, length_s: f64, step_s: f64) -> Cuts {
    let rate = frame.rate_hz;
    let mut out = Cuts { len: sample(length_s, rate).max(1) as usize, ..Cuts::default() };
    let (c0, c1) = frame.core();
    let (lo, hi) = (c0.max(frame.first()), c1.min(frame.end()));
    if hi <= lo {
        return out;
    }
    let step = step_s * rate;
    // First k with round(k·step) ≥ lo; a guess then a correction for rounding.
    let mut k = ((lo as f64 - 0.5) / step).ceil().max(0.0) as i64;
    while k > 0 && sample((k - 1) as f64 * step_s, rate) >= lo {
        k -= 1;
    }
    loop {
        let g = sample(k as f64 * step_s, rate);
        if g >= hi {
            break;
        }
        if g >= lo {
            frame.place(&mut out, k, g, g as f64 / rate, None);
        }
        k += 1;
    }
    out
}

/// Epochs [event − pre_s, event + post_s) around each event (s from the sweep start) whose
/// sample lies in the row's core; `index` is the event's position in `events`.
pub fn event_windows(frame: &TraceFrame, events_s: &[f64], pre_s: f64, post_s: f64) -> Cuts {
    let rate = frame.rate_hz;
    let (pre, post) = (sample(pre_s, rate), sample(post_s, rate));
    let mut out = Cuts { len: (pre + post).max(1) as usize, ..Cuts::default() };
    let (c0, c1) = frame.core();
    for (i, &e) in events_s.iter().enumerate() {
        if !e.is_finite() {
            out.skipped += 1;
            continue;
        }
        let g = sample(e, rate);
        if g < c0 || g >= c1 {
            continue;
        }
        frame.place(&mut out, i as i64, g - pre, e, Some(e));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(samples: usize) -> TraceFrame {
        TraceFrame { samples, rate_hz: 1000.0, trace_start_s: 0.0, core_s: None }
    }

    #[test]
    fn fixed_windows_of_a_whole_sweep_skip_the_partial_last_one() {
        let c = fixed_windows(&whole(1000), 0.3, 0.2);
        let starts: Vec<usize> = c.cuts.iter().map(|c| c.start).collect();
        assert_eq!(starts, vec![0, 200, 400, 600]);
        assert_eq!(c.len, 300);
        assert_eq!(c.skipped, 1, "the window at 800 would end at 1100");
        assert!(c.lost_s.is_empty());
        assert_eq!(c.cuts[2].start_s, 0.4);
    }

    #[test]
    fn chunked_rows_cut_each_window_once_and_report_windows_their_overlap_cannot_hold() {
        // A 1000-sample sweep in chunks of 250 with 50 samples of overlap each side.
        let frames: Vec<TraceFrame> = (0..4)
            .map(|k| {
                let (c0, c1) = (k * 250, (k + 1) * 250);
                let (t0, t1) = ((c0 as i64 - 50).max(0) as usize, (c1 + 50).min(1000));
                TraceFrame { samples: t1 - t0, rate_hz: 1000.0, trace_start_s: t0 as f64 / 1000.0, core_s: Some((c0 as f64 / 1000.0, c1 as f64 / 1000.0)) }
            })
            .collect();
        let whole_cuts = fixed_windows(&whole(1000), 0.04, 0.03);
        let mut got = Vec::new();
        for f in &frames {
            let c = fixed_windows(f, 0.04, 0.03);
            assert!(c.lost_s.is_empty());
            got.extend(c.cuts.iter().map(|c| (c.index, c.start_s)));
        }
        let want: Vec<(i64, f64)> = whole_cuts.cuts.iter().map(|c| (c.index, c.start_s)).collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.0, w.0);
            assert!((g.1 - w.1).abs() < 1e-12);
        }
        // Windows of 80 samples need 80 − (250 − start) samples beyond the core: those starting
        // at 230 and 240 need more than the 50 of overlap: lost, and said so.
        let c = fixed_windows(&frames[0], 0.08, 0.01);
        assert_eq!(c.lost_s, vec![0.23, 0.24], "{c:?}");
        // The sweep's own end is not a loss.
        let c = fixed_windows(&frames[3], 0.08, 0.01);
        assert!(c.lost_s.is_empty() && c.skipped == 7, "{c:?}");
    }

    #[test]
    fn epochs_around_events_skip_those_off_the_sweep() {
        let c = event_windows(&whole(1000), &[0.05, 0.5, 0.99, f64::NAN], 0.1, 0.2);
        assert_eq!(c.len, 300);
        assert_eq!(c.cuts.len(), 1);
        assert_eq!(c.cuts[0].index, 1);
        assert_eq!(c.cuts[0].start, 400);
        assert_eq!(c.cuts[0].event_s, Some(0.5));
        assert_eq!(c.skipped, 3);
        // In a chunk whose trace starts after the sweep start, an epoch reaching before it is lost.
        let f = TraceFrame { samples: 350, rate_hz: 1000.0, trace_start_s: 0.2, core_s: Some((0.25, 0.5)) };
        let c = event_windows(&f, &[0.26, 0.4], 0.1, 0.05);
        assert_eq!(c.lost_s, vec![0.26]);
        assert_eq!(c.cuts[0].start, 100);
    }
}
