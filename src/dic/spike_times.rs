//! Rows of Spike2Pop's spike-time CSV (`ID,spiking_times`, the times a quoted `"[t1, t2, ...]"`
//! Python list, written by pandas), parsed and checked one line at a time so a bad row fails
//! alone.

use super::DicStageError;

/// The header of a Spike2Pop spike-time CSV, column by column.
pub const HEADER: [&str; 2] = ["ID", "spiking_times"];

/// Parses the `spiking_times` field: a Python list string `[t1, t2, ...]`, optionally inside
/// double quotes (Spike2Pop writes it with pandas, which quotes it because it holds commas).
/// Checks every time: a number, finite, ≥ 0, strictly increasing (a repeated time is reported as
/// a duplicate), and at least `min_spikes` of them.
pub fn parse_spike_list(text: &str, min_spikes: usize) -> Result<Vec<f64>, DicStageError> {
    let mut s = text.trim();
    if s.starts_with('"') || s.ends_with('"') {
        if !(s.len() >= 2 && s.starts_with('"') && s.ends_with('"')) {
            return Err(DicStageError::NotAList(format!("unbalanced quotes in `{}`", short(s))));
        }
        s = s[1..s.len() - 1].trim();
    }
    if !(s.starts_with('[') && s.ends_with(']')) || s.len() < 2 {
        return Err(DicStageError::NotAList(format!("`{}` does not start with `[` and end with `]`", short(s))));
    }
    let inner = s[1..s.len() - 1].trim();
    let mut times = Vec::new();
    if !inner.is_empty() {
        for (index, part) in inner.split(',').enumerate() {
            let t = part.trim();
            let value: f64 = t.parse().map_err(|_| DicStageError::NotANumber { index, text: short(t) })?;
            check_next_time(&times, index, value)?;
            times.push(value);
        }
    }
    if times.len() < min_spikes {
        return Err(DicStageError::TooFewSpikes { count: times.len(), min: min_spikes });
    }
    Ok(times)
}

/// Spike #`index` = `value` after the `previous` ones: finite, non-negative, later than the last.
fn check_next_time(previous: &[f64], index: usize, value: f64) -> Result<(), DicStageError> {
    if !value.is_finite() {
        return Err(DicStageError::NonFinite { index, value });
    }
    if value < 0.0 {
        return Err(DicStageError::Negative { index, value });
    }
    if let Some(&last) = previous.last() {
        if value == last {
            return Err(DicStageError::Duplicate { index, value });
        }
        if value < last {
            return Err(DicStageError::Unsorted { index, value, previous: last });
        }
    }
    Ok(())
}

/// `s` cut to 40 characters (with `…`), for quoting input in messages.
pub fn short(s: &str) -> String {
    if s.chars().count() > 40 { format!("{}…", s.chars().take(40).collect::<String>()) } else { s.to_string() }
}

/// Parses one data line `ID,spiking_times` into (id, result). The id is everything before the
/// first comma (quotes stripped). `None` id when the line has no comma at all or an empty id.
pub fn parse_spike_line(line: &str, line_no: usize, min_spikes: usize) -> (Option<String>, Result<Vec<f64>, DicStageError>) {
    let Some((id, rest)) = line.split_once(',') else {
        return (None, Err(DicStageError::NoComma { line: line_no }));
    };
    let id = id.trim().trim_matches('"').trim().to_string();
    if id.is_empty() {
        return (None, Err(DicStageError::EmptyId));
    }
    let parsed = parse_spike_list(rest, min_spikes);
    (Some(id), parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dic::features::extract_features;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dicstage/");

    /// The 5 Spike2Pop example trains (tests/fixtures/dicstage/stg_set.csv) as (ID, times).
    fn example_trains() -> Vec<(String, Vec<f64>)> {
        let text = std::fs::read_to_string(format!("{FIX}stg_set.csv")).unwrap();
        text.lines()
            .skip(1)
            .enumerate()
            .map(|(i, l)| {
                let (id, t) = parse_spike_line(l, i + 2, 3);
                (id.unwrap(), t.unwrap())
            })
            .collect()
    }

    #[test]
    fn parses_the_real_spike2pop_file() {
        let rows = example_trains();
        let counts: Vec<usize> = rows.iter().map(|r| r.1.len()).collect();
        // Counts stated by the data's README (upstream file): 10, 16, 23, 35, 16.
        assert_eq!(counts, [10, 16, 23, 35, 16]);
        assert_eq!(rows[0].0, "1");
        assert_eq!(rows[0].1[0], 3057.0500000002075);
    }

    /// Labels and burst metrics of the parsed trains against upstream SpikeFeatureExtractor
    /// (computed_stg_reference_values.json, copied to the fixture folder), float32 upstream.
    #[test]
    fn parsed_trains_match_upstream_features() {
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{FIX}stg_set_features.json")).unwrap()).unwrap();
        for ((_, times), want) in example_trains().iter().zip(r["rows"].as_array().unwrap()) {
            let f = extract_features(times).unwrap();
            assert_eq!(f.label as u8 as u64, want["label"].as_u64().unwrap());
            for (got, key) in [
                (f.f_spiking_hz, "f_spiking"),
                (f.f_intra_bursting_hz, "f_intra_bursting"),
                (f.f_inter_bursting_hz, "f_inter_bursting"),
                (f.duration_bursting_ms, "duration_bursting"),
                (f.nbr_spikes_bursting, "nbr_spikes_bursting"),
            ] {
                let w = want[key].as_f64().unwrap();
                assert!((got - w).abs() <= 1e-5 * w.abs().max(1.0), "{key}: {got} vs {w}");
            }
        }
    }

    #[test]
    fn bad_rows_are_rejected_with_reasons() {
        let bad = |s: &str| parse_spike_list(s, 3).unwrap_err().to_string();
        assert!(bad("\"[1.0, 3.0, 2.0]\"").contains("not sorted"));
        assert!(bad("\"[1.0, -3.0, 4.0]\"").contains("negative"));
        assert!(bad("\"[1.0, 2.0, 2.0]\"").contains("duplicates"));
        assert!(bad("\"[1.0, 2.0]\"").contains("at least 3"));
        assert!(bad("\"[1.0, x, 2.0]\"").contains("not a number"));
        assert!(bad("\"[1.0, 2.0, 3.0\"").contains("not a"));
        assert!(bad("\"[1.0, nan, 3.0]\"").contains("not finite"));
        assert!(bad("\"[1.0, 2.0, 3.0]").contains("unbalanced"));
        assert_eq!(parse_spike_list("[1, 2.5, 4e1]", 3).unwrap(), vec![1.0, 2.5, 40.0]);
        assert!(matches!(parse_spike_line("no comma here", 7, 3).1, Err(DicStageError::NoComma { line: 7 })));
        assert!(matches!(parse_spike_line("\"\",[1, 2, 3]", 2, 3), (None, Err(DicStageError::EmptyId))));
    }
}
