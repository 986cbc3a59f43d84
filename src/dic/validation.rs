//! Validation of a generated population against its target train (spec §7): the population's
//! majority activity class, and the van Rossum ratio R = mean d(target, cell) / mean
//! d(cell_i, cell_j). The thesis divides by the mean distance from the train to the other
//! members of its own ground-truth population; spike-time inputs come without it, so the
//! within-population spread of the generated cells stands in (a documented deviation).

use rayon::prelude::*;

use super::features::{ActivityClass, van_rossum_distance};

/// Majority class of a population (ties: bursting, then spiking, then silent).
pub fn majority_class(classes: &[ActivityClass]) -> ActivityClass {
    let count = |c| classes.iter().filter(|&&x| x == c).count();
    let (s, b, q) = (count(ActivityClass::Spiking), count(ActivityClass::Bursting), count(ActivityClass::Silent));
    if b >= s && b >= q && b > 0 {
        ActivityClass::Bursting
    } else if s >= q && s > 0 {
        ActivityClass::Spiking
    } else {
        ActivityClass::Silent
    }
}

/// Mean van Rossum distance over ordered pairs (i ≠ j) of `trains` (ms), τ from the first of
/// each pair; trains with < 2 spikes cannot set τ and are skipped as references. NaN if no pair.
pub fn mean_pairwise_van_rossum(trains: &[Vec<f64>], dt_ms: f64, epsilon: f64) -> f64 {
    let sums: Vec<(f64, usize)> = (0..trains.len())
        .into_par_iter()
        .filter(|&i| trains[i].len() >= 2)
        .map(|i| {
            let mut s = (0.0, 0usize);
            for (j, v) in trains.iter().enumerate() {
                if j != i {
                    if let Ok(d) = van_rossum_distance(&trains[i], v, dt_ms, epsilon) {
                        s.0 += d;
                        s.1 += 1;
                    }
                }
            }
            s
        })
        .collect();
    let (sum, n) = sums.iter().fold((0.0, 0usize), |a, b| (a.0 + b.0, a.1 + b.1));
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

/// What one target's cells contribute to its validation, collected cell by cell in input order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PopulationTally {
    pub classes: Vec<ActivityClass>,
    /// Sum and count of the finite distances d(target, cell).
    vr_sum: f64,
    vr_n: usize,
    /// The first cells' trains (ms), for the within-population distance.
    pub trains: Vec<Vec<f64>>,
}

impl PopulationTally {
    /// Adds a cell: its class, its distance to the target train (ignored unless finite) and its
    /// train, kept while fewer than `max_trains` are.
    pub fn add(&mut self, class: ActivityClass, vr_to_target: Option<f64>, train: Vec<f64>, max_trains: usize) {
        self.classes.push(class);
        if let Some(d) = vr_to_target.filter(|d| d.is_finite()) {
            self.vr_sum += d;
            self.vr_n += 1;
        }
        if self.trains.len() < max_trains {
            self.trains.push(train);
        }
    }

    /// The target's summary against the train's class `target` (`None` when unknown).
    pub fn summarise(&self, target: Option<ActivityClass>, dt_ms: f64, epsilon: f64) -> TargetSummary {
        let within = mean_pairwise_van_rossum(&self.trains, dt_ms, epsilon);
        let to_target = if self.vr_n > 0 { self.vr_sum / self.vr_n as f64 } else { f64::NAN };
        let population_class = majority_class(&self.classes);
        let r_ratio = to_target / within;
        TargetSummary {
            n_cells: self.classes.len(),
            n_class_match: self.classes.iter().filter(|&&c| Some(c) == target).count(),
            population_class,
            mean_vr_to_target: to_target,
            mean_vr_within: within,
            r_ratio,
            accepted: Some(population_class) == target && r_ratio <= 1.0,
        }
    }
}

/// Per-target validation summary (see [`PopulationTally::summarise`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSummary {
    pub n_cells: usize,
    pub n_class_match: usize,
    pub population_class: ActivityClass,
    pub mean_vr_to_target: f64,
    pub mean_vr_within: f64,
    pub r_ratio: f64,
    /// The population's class is the train's and R ≤ 1.
    pub accepted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_and_pairwise() {
        use ActivityClass::*;
        assert_eq!(majority_class(&[Spiking, Bursting, Bursting]), Bursting);
        assert_eq!(majority_class(&[Spiking, Spiking, Silent]), Spiking);
        assert_eq!(majority_class(&[]), Silent);
        // identical trains: zero spread
        let t = vec![vec![0.0, 10.0, 20.0, 30.0]; 3];
        // zero up to round-off of the kernel's exponential sums (~1e-32)
        assert!(mean_pairwise_van_rossum(&t, 0.1, 1e-6).abs() < 1e-20);
    }

    #[test]
    fn tally_summary_known_answer() {
        use ActivityClass::*;
        let mut t = PopulationTally::default();
        let train = vec![0.0, 10.0, 20.0, 30.0];
        t.add(Bursting, Some(2.0), train.clone(), 2);
        t.add(Bursting, Some(f64::NAN), train.clone(), 2);
        t.add(Spiking, Some(4.0), vec![0.0, 5.0], 2);
        assert_eq!(t.trains.len(), 2, "only the first two trains are kept");
        let s = t.summarise(Some(Bursting), 0.1, 1e-6);
        assert_eq!((s.n_cells, s.n_class_match, s.population_class), (3, 2, Bursting));
        assert_eq!(s.mean_vr_to_target, 3.0, "the NaN distance is left out");
        // Two identical kept trains: no spread (round-off only), so R is far above 1 or not
        // finite, and the population is not accepted.
        assert!((s.r_ratio.is_nan() || s.r_ratio > 1.0) && !s.accepted, "{}", s.r_ratio);
    }
}
