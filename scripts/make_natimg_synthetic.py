"""Format-faithful synthetic natimg2800 recordings for study 2 (Stringer, Pachitariu et al. 2018b).

The real responses (figshare 6845348, natimg2800_M*.mat, hundreds of MB) cannot be downloaded here.
This script writes recordings in the SAME MATLAB v5 layout the study reads: a struct `stim` with
`resp` [presentations x neurons] single, `spont` [timepoints x neurons] single and `istim`
[presentations x 1] double (1-based image ids; 2801 = gray screen), and a top-level `med`
[neurons x 3] uint16 (neuron x, y, z positions). Image classes are the REAL MouseLand labels of the
2,800 images (class_assignment_confident.csv: 12 classes, unknown + 11, the labels the study used).

Generative model (all draws from numpy's default_rng(seed)):
  positions   x, y uniform integers in [0, 1100] (a ~1.1 mm field of view), z one of 11 planes
              0, 35, ..., 350 (the study's grids have 11 z layers); stored as uint16 like `med`.
  tuning      for each class c a smooth map f_c(x, y) over cortex: the sum of 3 Gaussian bumps
              (sigma 250, random centres and signs), rescaled to unit peak. Neuron n's log-rate gain
              for class c is  a[n, c] = signal * (f_c(x_n, y_n) + 0.5 * e[n, c]),  e ~ N(0, 1).
              The spatial smoothness is an ASSUMPTION that lets voxel averages keep class
              information; real mouse V1 is closer to salt-and-pepper, one reason the study's voxel
              decoders sat at the majority-class level.
  image       every image i has its own response pattern b[n, i] ~ N(0, 0.3^2) (images of one class
              differ).
  shared      a low-dimensional brain-wide fluctuation: D = 6 latent AR(1) signals (rho 0.9, unit
              variance), loadings W[n, d] ~ N(0, shared^2). It drives the spontaneous frames AND
              contaminates every stimulus presentation, so removing the top spontaneous PCs matters.
  counts      rate = g_n * exp(a[n, c(i)] + b[n, i] + W s_t) with g_n ~ U(10, 30) (--gain-low, --gain-high); the stored value is
              Poisson(rate) (integers as single; like deconvolved activity it is non-negative and
              skewed). Gray-screen presentations (istim = 2801) have no class or image term.
Sizes (scaled down from 11,449 neurons x 5,600 presentations so data/ stays small): --neurons 400,
every one of the 2,800 images once (--stride k: every k-th) plus 56 gray screens in shuffled order, 500 spontaneous frames;
zlib-compressed v5 (savemat do_compression=True): ~1.6 MB per file. --signal 0 writes the no-signal
variant (class tuning removed, everything else identical).

Usage: python make_natimg_synthetic.py CLASSES_CSV OUT.mat [--signal 0.1] [--shared 0.3]
       [--neurons 400] [--stride 1] [--spont 500] [--blanks 56] [--seed 1]
"""
import argparse
import csv

import numpy as np
import scipy.io


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("classes_csv")
    ap.add_argument("out")
    ap.add_argument("--signal", type=float, default=0.1)
    ap.add_argument("--shared", type=float, default=0.3)
    ap.add_argument("--neurons", type=int, default=400)
    ap.add_argument("--stride", type=int, default=1, help="show every STRIDE-th image (1 = all 2,800), each once")
    ap.add_argument("--spont", type=int, default=500)
    ap.add_argument("--blanks", type=int, default=56)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--gain-low", type=float, default=10.0)
    ap.add_argument("--gain-high", type=float, default=30.0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)

    with open(a.classes_csv) as f:
        rows = list(csv.DictReader(f))
    class_of_image = np.array([int(r["class_id"]) for r in rows])
    n_classes = class_of_image.max() + 1
    n_total_images = len(class_of_image)  # 2800: the gray screen is id n_total_images + 1
    n = a.neurons

    x = rng.integers(0, 1101, n)
    y = rng.integers(0, 1101, n)
    z = 35 * rng.integers(0, 11, n)
    med = np.stack([x, y, z], axis=1).astype(np.uint16)

    fields = np.zeros((n_classes, n))
    for c in range(n_classes):
        for _ in range(3):
            cx, cy = rng.uniform(0, 1100, 2)
            sign = rng.choice([-1.0, 1.0])
            fields[c] += sign * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 250.0**2))
        fields[c] /= np.abs(fields[c]).max()
    tuning = a.signal * (fields + 0.5 * rng.normal(size=(n_classes, n)))  # [class, neuron]
    image_term = 0.3 * rng.normal(size=(n_total_images, n))
    gain = rng.uniform(a.gain_low, a.gain_high, n)
    loadings = a.shared * rng.normal(size=(6, n))

    def latent(t):
        s = np.zeros((t, 6))
        s[0] = rng.normal(size=6)
        for k in range(1, t):
            s[k] = 0.9 * s[k - 1] + np.sqrt(1 - 0.81) * rng.normal(size=6)
        return s

    images = np.arange(0, n_total_images, a.stride)
    istim = np.concatenate([images + 1, np.full(a.blanks, n_total_images + 1)])
    istim = istim[rng.permutation(len(istim))]
    p = len(istim)
    drive = latent(p) @ loadings
    for k, s in enumerate(istim):
        if s <= n_total_images:
            drive[k] += tuning[class_of_image[s - 1]] + image_term[s - 1]
    resp = rng.poisson(gain * np.exp(np.clip(drive, -10, 4))).astype(np.float32)
    spont = rng.poisson(gain * np.exp(np.clip(latent(a.spont) @ loadings, -10, 4))).astype(np.float32)

    stim = {"resp": resp, "spont": spont, "istim": istim.astype(np.float64).reshape(-1, 1)}
    scipy.io.savemat(a.out, {"stim": stim, "med": med}, do_compression=True, oned_as="column")
    print(f"{a.out}: {p} presentations ({a.blanks} gray screen) x {n} neurons, {a.spont} spontaneous frames, "
          f"signal {a.signal}, shared {a.shared}, seed {a.seed}")


if __name__ == "__main__":
    main()
