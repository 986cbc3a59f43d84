//! A dense 3-D voxel grid over neuron positions, and the mean of a per-neuron value per voxel.
//!
//! The grid spans the data's range with inclusive edges, so the neuron at the maximum coordinate
//! falls in the last bin (the study's 2019 `divide_space` used strict comparisons and a fixed
//! range, which left voxels empty by construction).

use serde::Serialize;

/// Why a grid cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VoxelError {
    #[error("no neuron positions")]
    NoPositions,
    #[error("neuron {neuron} has a non-finite position {position:?}")]
    NonFinite { neuron: usize, position: [f32; 3] },
    #[error("axis {axis}: 0 bins")]
    ZeroBins { axis: usize },
    #[error("axis {axis}: bin size {size} is not positive")]
    BinSize { axis: usize, size: f64 },
    #[error("a {}x{}x{} grid is too large", dims[0], dims[1], dims[2])]
    TooLarge { dims: [usize; 3] },
}

/// Voxels a grid may have at the most (a larger one is a mistaken bin size, not a grid).
pub const MAX_VOXELS: usize = 50_000_000;

/// How the voxel grid is sized along each axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BinSpec {
    /// This many bins per axis (x, y, z) over the data's range.
    Count([usize; 3]),
    /// Bins of this width per axis (same unit as the positions); as many as cover the range.
    Size([f64; 3]),
}

/// Neurons assigned to the voxels of a dense grid over their positions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VoxelGrid {
    /// Bins per axis (x, y, z).
    pub dims: [usize; 3],
    /// Lower edge of the first bin per axis (the data's minimum).
    pub origin: [f64; 3],
    /// The data's maximum per axis (inside the last bin: edges are inclusive).
    pub max: [f64; 3],
    /// Bin width per axis (0 for an axis where every neuron has the same coordinate).
    pub width: [f64; 3],
    /// Flat voxel index `(ix * ny + iy) * nz + iz` of every neuron.
    #[serde(skip)]
    pub voxel_of_neuron: Vec<usize>,
    /// Neurons per voxel, flat in the same order.
    pub neurons_per_voxel: Vec<u32>,
}

impl VoxelGrid {
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn empty_voxels(&self) -> usize {
        self.neurons_per_voxel.iter().filter(|&&c| c == 0).count()
    }
    /// The (ix, iy, iz) of every voxel holding no neuron.
    pub fn empty_voxel_coordinates(&self) -> Vec<[usize; 3]> {
        let [_, ny, nz] = self.dims;
        (0..self.len()).filter(|&v| self.neurons_per_voxel[v] == 0).map(|v| [v / (ny * nz), (v / nz) % ny, v % nz]).collect()
    }
    /// Mean of `values` (one per neuron) in each voxel; 0 where a voxel holds no neuron.
    pub fn mean(&self, values: &[f32]) -> Vec<f32> {
        let mut sum = vec![0.0f64; self.len()];
        for (&v, &x) in self.voxel_of_neuron.iter().zip(values) {
            sum[v] += f64::from(x);
        }
        sum.iter().zip(&self.neurons_per_voxel).map(|(s, &c)| if c == 0 { 0.0 } else { (s / f64::from(c)) as f32 }).collect()
    }
}

/// The smallest and largest coordinate per axis.
fn bounds(positions: &[[f32; 3]]) -> ([f64; 3], [f64; 3]) {
    let mut origin = [f64::INFINITY; 3];
    let mut max = [f64::NEG_INFINITY; 3];
    for p in positions {
        for a in 0..3 {
            origin[a] = origin[a].min(f64::from(p[a]));
            max[a] = max[a].max(f64::from(p[a]));
        }
    }
    (origin, max)
}

/// Bins and bin width of axis `axis`, whose data span `range`.
fn axis_bins(bins: BinSpec, axis: usize, range: f64) -> Result<(usize, f64), VoxelError> {
    match bins {
        BinSpec::Count(c) => {
            if c[axis] == 0 {
                return Err(VoxelError::ZeroBins { axis });
            }
            Ok((c[axis], range / c[axis] as f64))
        }
        BinSpec::Size(s) => {
            let size = s[axis];
            if !(size > 0.0 && size.is_finite()) {
                return Err(VoxelError::BinSize { axis, size });
            }
            Ok((((range / size).ceil() as usize).max(1), if range > 0.0 { size } else { 0.0 }))
        }
    }
}

/// Bins neurons at `positions` into a dense grid over [min, max] of each axis. Bin `i` of an
/// axis holds `origin + i*width <= p < origin + (i+1)*width`, except that the last bin also
/// holds `p == max` (inclusive upper edge), so no neuron falls outside the grid. With
/// [`BinSpec::Size`] the bin count is `max(1, ceil(range / width))` and an axis with zero range
/// has one bin; with [`BinSpec::Count`] the grid keeps the asked shape and an axis with zero range
/// puts every neuron in its first bin (the others are empty, and reported as such).
pub fn voxel_grid(positions: &[[f32; 3]], bins: BinSpec) -> Result<VoxelGrid, VoxelError> {
    if positions.is_empty() {
        return Err(VoxelError::NoPositions);
    }
    if let Some((neuron, p)) = positions.iter().enumerate().find(|(_, p)| p.iter().any(|x| !x.is_finite())) {
        return Err(VoxelError::NonFinite { neuron, position: *p });
    }
    let (origin, max) = bounds(positions);
    let mut dims = [1usize; 3];
    let mut width = [0.0; 3];
    for a in 0..3 {
        (dims[a], width[a]) = axis_bins(bins, a, max[a] - origin[a])?;
    }
    let total = dims.iter().product::<usize>();
    if total > MAX_VOXELS {
        return Err(VoxelError::TooLarge { dims });
    }
    let index = |a: usize, x: f64| -> usize {
        if width[a] == 0.0 {
            return 0;
        }
        (((x - origin[a]) / width[a]).floor() as usize).min(dims[a] - 1)
    };
    let mut neurons_per_voxel = vec![0u32; total];
    let voxel_of_neuron: Vec<usize> = positions
        .iter()
        .map(|p| {
            let v = (index(0, f64::from(p[0])) * dims[1] + index(1, f64::from(p[1]))) * dims[2] + index(2, f64::from(p[2]));
            neurons_per_voxel[v] += 1;
            v
        })
        .collect();
    Ok(VoxelGrid { dims, origin, max, width, voxel_of_neuron, neurons_per_voxel })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The acceptance test: neurons spread uniformly over a range fill every voxel of
    /// the grid (no empty voxel made by the binning), and the neuron at the maximum coordinate
    /// lands in the last bin, not outside the grid.
    #[test]
    fn uniform_neurons_leave_no_empty_voxel_and_max_is_in_last_bin() {
        // A regular lattice 0, 10, ..., 1190 in x and y, 11 planes 0, 35, ..., 350 in z (the
        // study's 2019 `divide_space` used 6 bins of 200 over 0..1200 with strict comparisons).
        let mut pos = Vec::new();
        for ix in 0..120 {
            for iy in 0..120 {
                for iz in 0..11 {
                    pos.push([ix as f32 * 10.0, iy as f32 * 10.0, iz as f32 * 35.0]);
                }
            }
        }
        for bins in [[6, 6, 11], [7, 5, 3], [120, 120, 11], [1, 1, 1]] {
            let g = voxel_grid(&pos, BinSpec::Count(bins)).unwrap();
            assert_eq!(g.dims, bins);
            assert_eq!(g.empty_voxels(), 0, "bins {bins:?}: empty voxels {:?}", g.empty_voxel_coordinates());
            assert_eq!(g.neurons_per_voxel.iter().map(|&c| c as usize).sum::<usize>(), pos.len());
            let last = g.len() - 1;
            let max_neuron = pos.iter().position(|p| *p == [1190.0, 1190.0, 350.0]).unwrap();
            assert_eq!(g.voxel_of_neuron[max_neuron], last, "bins {bins:?}: the max-coordinate neuron");
            assert_eq!(g.voxel_of_neuron[0], 0);
        }
        // Counts: 120 lattice values in 6 bins of width 1190/6 = 198.33: 20 values per bin.
        let g = voxel_grid(&pos, BinSpec::Count([6, 1, 1])).unwrap();
        assert_eq!(g.neurons_per_voxel, vec![20 * 120 * 11; 6]);
        // Bin size 200 over 0..1190 gives 6 bins; 350/35 = 10 exactly: 10 bins, max in the last.
        let g = voxel_grid(&pos, BinSpec::Size([200.0, 200.0, 35.0])).unwrap();
        assert_eq!(g.dims, [6, 6, 10]);
        assert_eq!(g.empty_voxels(), 0);
        let max_neuron = pos.len() - 1;
        assert_eq!(g.voxel_of_neuron[max_neuron], g.len() - 1);
        // Uniform random positions (seeded LCG): no empty voxel with 10 neurons per voxel on average.
        let mut s: u64 = 12345;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 11) as f32 / (1u64 << 53) as f32
        };
        let random: Vec<[f32; 3]> = (0..4000).map(|_| [next() * 1000.0, next() * 1000.0, next() * 300.0]).collect();
        let g = voxel_grid(&random, BinSpec::Count([5, 5, 4])).unwrap();
        assert_eq!(g.empty_voxels(), 0);
    }

    #[test]
    fn voxel_means_and_empty_voxels() {
        // Two neurons in voxel (0,0,0), one in the last voxel, the middle of a 3-bin x axis empty.
        let pos = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [30.0, 0.0, 0.0]];
        let g = voxel_grid(&pos, BinSpec::Count([3, 1, 1])).unwrap();
        assert_eq!(g.dims, [3, 1, 1]);
        // y and z have zero range: with bin counts the shape stays, every neuron in bin 0 there.
        let g2 = voxel_grid(&pos, BinSpec::Count([3, 2, 1])).unwrap();
        assert_eq!(g2.neurons_per_voxel, vec![2, 0, 0, 0, 1, 0]);
        assert_eq!(voxel_grid(&pos, BinSpec::Size([10.0, 5.0, 5.0])).unwrap().dims, [3, 1, 1]);
        assert_eq!(g.neurons_per_voxel, vec![2, 0, 1]);
        assert_eq!(g.empty_voxel_coordinates(), vec![[1, 0, 0]]);
        assert_eq!(g.mean(&[1.0, 3.0, -5.0]), vec![2.0, 0.0, -5.0]);
    }

    #[test]
    fn impossible_grids_are_refused_with_their_reason() {
        let pos = [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]];
        assert_eq!(voxel_grid(&[], BinSpec::Count([1, 1, 1])), Err(VoxelError::NoPositions));
        assert_eq!(voxel_grid(&pos, BinSpec::Count([1, 0, 1])), Err(VoxelError::ZeroBins { axis: 1 }));
        assert_eq!(voxel_grid(&pos, BinSpec::Size([1.0, 1.0, -1.0])), Err(VoxelError::BinSize { axis: 2, size: -1.0 }));
        assert_eq!(voxel_grid(&pos, BinSpec::Count([1000, 1000, 1000])), Err(VoxelError::TooLarge { dims: [1000, 1000, 1000] }));
        // A NaN position is not equal to itself: compare the message.
        let e = voxel_grid(&[[0.0, f32::NAN, 0.0]], BinSpec::Count([1, 1, 1])).unwrap_err();
        assert_eq!(e.to_string(), "neuron 0 has a non-finite position [0.0, NaN, 0.0]");
    }
}
