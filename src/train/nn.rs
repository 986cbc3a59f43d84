//! Neural-network models for `train.regress` / `train.classify`: a multilayer perceptron (`mlp`)
//! on scalar features and a 1-D convolutional network (`cnn1d`) on raw traces (list columns,
//! expanded by the training stage to `trace[0]`, `trace[1]`, ...).
//!
//! Both are trained with burn (the `flex` pure-Rust CPU backend, autodiff, Adam) behind the cargo
//! feature `dl-burn`, which is on by default. The specs and the saved networks are plain serde
//! data, so a pipeline naming `mlp` still parses without the feature, and then fails validation
//! with an error that says the feature is off instead of "unknown model".
//!
//! Determinism: every random choice (weight initialisation, the early-stopping split, the batch
//! order, dropout masks) is drawn from one `StdRng` seeded with the stage seed, never from burn's
//! process-global generator, which concurrent tests or stages would share. The same seed on the
//! same build gives the same network.
//!
//! Losses (all on the network's raw outputs; the softmax is applied exactly once, inside the
//! cross-entropy, never by the network itself):
//! * classification: softmax cross-entropy −log(exp(z_y)/Σ_k exp(z_k)), computed as
//!   −log_softmax(z)_y; with balanced classes each row is weighted by n/(K·n_y) and the loss is
//!   Σ w_i·CE_i / Σ w_i (the weighted mean of PyTorch's `CrossEntropyLoss(weight=...)`);
//! * regression: half the mean squared error on the standardized target (scikit-learn's
//!   `MLPRegressor` squared loss; the target is standardized on the training rows and mapped back);
//! * counts (`loss = "poisson"`): the Poisson negative log-likelihood without its constant,
//!   mean(exp(η) − y·η), where the network outputs the log rate η and predicts exp(η)
//!   (McCullagh & Nelder, *Generalized Linear Models*, 2nd ed., section 6.2).
//!
//! `weight_decay` λ adds λ/2·Σ‖W‖² over the weight matrices and kernels (not biases) to each batch's
//! loss; scikit-learn's `alpha` adds alpha/(2·batch)·Σ‖W‖², so alpha = λ·batch_size.

use serde::{Deserialize, Serialize};

use super::error::ModelError;

fn default_hidden() -> Vec<usize> {
    vec![100]
}
fn default_channels() -> Vec<usize> {
    vec![16, 32]
}
fn default_lr() -> f64 {
    1e-3
}
fn default_epochs() -> usize {
    200
}
fn default_batch() -> usize {
    32
}
fn default_weight_decay() -> f64 {
    1e-4
}
fn default_patience() -> usize {
    10
}
fn default_validation_fraction() -> f64 {
    0.1
}
fn default_kernel() -> usize {
    7
}
fn default_pool() -> usize {
    2
}

/// Loss of a neural regressor (classifiers always use softmax cross-entropy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NnLoss {
    /// Half the mean squared error on the standardized target.
    #[default]
    Mse,
    /// Poisson negative log-likelihood for non-negative counts; the network outputs the log rate.
    Poisson,
}

/// Declares a network spec: its own fields, then the training fields every architecture shares
/// (declared once here, so their names, defaults and docs cannot drift apart), and its
/// `training()` accessor. serde's `deny_unknown_fields` does not combine with `flatten`, hence a
/// macro rather than a nested struct.
macro_rules! nn_spec_struct {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// Adam step size, > 0; default 1e-3.
            #[serde(default = "default_lr")]
            pub learning_rate: f64,
            /// Maximum passes over the training rows, ≥ 1; default 200.
            #[serde(default = "default_epochs")]
            pub epochs: usize,
            /// Rows per Adam step, ≥ 1; default 32.
            #[serde(default = "default_batch")]
            pub batch_size: usize,
            /// L2 penalty λ/2·Σ‖W‖² on the weights and kernels (not biases), ≥ 0; default 1e-4.
            #[serde(default = "default_weight_decay")]
            pub weight_decay: f64,
            /// Early stopping: stop after this many epochs without a lower validation loss, ≥ 1; default 10.
            #[serde(default = "default_patience")]
            pub patience: usize,
            /// Fraction of the training rows held out for early stopping (stratified for classes), in
            /// [0, 0.5]; 0 = no early stopping (train every epoch). Default 0.1.
            #[serde(default = "default_validation_fraction")]
            pub validation_fraction: f64,
            /// Regression loss: "mse" (default) or "poisson" (counts).
            #[serde(default)]
            pub loss: NnLoss,
        }

        impl $name {
            pub(crate) fn training(&self) -> Training {
                Training {
                    dropout: self.dropout,
                    learning_rate: self.learning_rate,
                    epochs: self.epochs,
                    batch_size: self.batch_size,
                    weight_decay: self.weight_decay,
                    patience: self.patience,
                    validation_fraction: self.validation_fraction,
                    loss: self.loss,
                }
            }
        }
    };
}

nn_spec_struct! {
    /// Multilayer perceptron: dense layers with ReLU and dropout, then a linear output layer
    /// (one unit for regression, one logit per class for classification).
    pub struct MlpSpec {
        /// Units of each hidden layer, each ≥ 1; default [100] (scikit-learn's default).
        #[serde(default = "default_hidden")]
        pub hidden: Vec<usize>,
        /// Dropout probability after each hidden layer during training, in [0, 1); default 0.
        #[serde(default)]
        pub dropout: f64,
    }
}

nn_spec_struct! {
    /// 1-D convolutional network for traces: blocks of Conv1d ("same" padding) → ReLU → max pool,
    /// then the global average over time, dense ReLU layers, and a linear output. The features must
    /// be list columns of one length; each list column is one input channel.
    pub struct Cnn1dSpec {
        /// Output channels of each convolution block, each ≥ 1; default [16, 32].
        #[serde(default = "default_channels")]
        pub channels: Vec<usize>,
        /// Convolution kernel length in samples, odd, ≥ 1; default 7.
        #[serde(default = "default_kernel")]
        pub kernel_size: usize,
        /// Max-pool width (and stride) after each block, ≥ 1 (1 = no pooling); default 2.
        #[serde(default = "default_pool")]
        pub pool: usize,
        /// Units of the dense hidden layers after the pooling, each ≥ 1; default none.
        #[serde(default)]
        pub hidden: Vec<usize>,
        /// Dropout probability after each dense hidden layer during training, in [0, 1); default 0.
        #[serde(default)]
        pub dropout: f64,
    }
}

/// The training hyperparameters both architectures share.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "dl-burn"), allow(dead_code))] // `loss` is read by the burn engine only
pub(crate) struct Training {
    pub dropout: f64,
    pub learning_rate: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub weight_decay: f64,
    pub patience: usize,
    pub validation_fraction: f64,
    pub loss: NnLoss,
}

/// Checks the documented ranges of the shared fields (and that the feature is compiled in).
pub(crate) fn validate(model: &'static str, t: &Training, hidden: &[usize]) -> Result<(), ModelError> {
    let bad = |field: &'static str, reason: String| Err(ModelError::InvalidParameter { model, field, reason });
    if !cfg!(feature = "dl-burn") {
        return bad(
            "model",
            "needs the neural-network backend, which this build of neurostream left out: rebuild with the cargo feature `dl-burn` (on by default; it is off after --no-default-features)".into(),
        );
    }
    if hidden.contains(&0) {
        return bad("hidden", format!("every layer needs >= 1 unit, got {hidden:?}"));
    }
    if !(t.dropout >= 0.0 && t.dropout < 1.0) {
        return bad("dropout", format!("must be in [0, 1), got {}", t.dropout));
    }
    if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
        return bad("learning_rate", format!("must be > 0, got {}", t.learning_rate));
    }
    if t.epochs == 0 {
        return bad("epochs", "must be >= 1".into());
    }
    if t.batch_size == 0 {
        return bad("batch_size", "must be >= 1".into());
    }
    if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
        return bad("weight_decay", format!("must be finite and >= 0, got {}", t.weight_decay));
    }
    if t.patience == 0 {
        return bad("patience", "must be >= 1".into());
    }
    if !(0.0..=0.5).contains(&t.validation_fraction) {
        return bad("validation_fraction", format!("must be in [0, 0.5], got {}", t.validation_fraction));
    }
    Ok(())
}

pub(crate) fn validate_cnn(s: &Cnn1dSpec) -> Result<(), ModelError> {
    let bad = |field: &'static str, reason: String| Err(ModelError::InvalidParameter { model: "cnn1d", field, reason });
    validate("cnn1d", &s.training(), &s.hidden)?;
    if s.channels.is_empty() || s.channels.contains(&0) {
        return bad("channels", format!("give one or more blocks of >= 1 channels, got {:?}", s.channels));
    }
    if s.kernel_size % 2 == 0 {
        return bad("kernel_size", format!("must be odd (\"same\" padding of (k-1)/2 each side), got {}", s.kernel_size));
    }
    if s.pool == 0 {
        return bad("pool", "must be >= 1".into());
    }
    Ok(())
}

/// How the columns of a trace feature matrix form channels: every feature is `name[i]`, each list
/// column contributes `length` consecutive columns `name[0]..name[length-1]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceLayout {
    pub channels: Vec<String>,
    pub length: usize,
}

/// Reads the channel layout from the expanded feature names (see [`SequenceLayout`]).
pub fn sequence_layout(feature_names: &[String]) -> Result<SequenceLayout, ModelError> {
    let split = |f: &str| -> Option<(String, usize)> {
        let (base, rest) = f.rsplit_once('[')?;
        let index = rest.strip_suffix(']')?.parse().ok()?;
        Some((base.to_string(), index))
    };
    let mut channels: Vec<(String, usize)> = Vec::new();
    for (j, f) in feature_names.iter().enumerate() {
        let Some((base, index)) = split(f) else {
            return Err(ModelError::BadData(format!(
                "cnn1d takes list columns (traces) only; feature `{f}` is a scalar column"
            )));
        };
        let seen = channels.iter().any(|(b, _)| *b == base);
        match channels.last_mut() {
            Some((b, n)) if *b == base && index == *n => *n += 1,
            _ if index == 0 && !seen => channels.push((base, 1)),
            _ => return Err(ModelError::BadData(format!("cnn1d: feature {j} `{f}` is out of order for a list column"))),
        }
    }
    let length = channels.first().map_or(0, |c| c.1);
    if let Some((b, n)) = channels.iter().find(|c| c.1 != length) {
        return Err(ModelError::BadData(format!(
            "cnn1d: list column `{b}` has {n} samples but `{}` has {length}; all trace columns need one length",
            channels[0].0
        )));
    }
    if length == 0 {
        return Err(ModelError::BadData("cnn1d: no trace columns".into()));
    }
    Ok(SequenceLayout { channels: channels.into_iter().map(|c| c.0).collect(), length })
}

/// One dense or convolution layer's parameters. Dense: `weight` is row-major [n_in][n_out]
/// (y = x·W + b). Convolution: `weight` is [n_out][n_in][kernel].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    pub n_in: usize,
    pub n_out: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// The convolutional front end of a `cnn1d` network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvPart {
    pub layout: SequenceLayout,
    pub kernel_size: usize,
    pub pool: usize,
    pub blocks: Vec<Layer>,
}

/// What the output units mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Output {
    /// One logit per class; the prediction is the arg max.
    Classes { n_classes: usize },
    /// One unit on the standardized target: prediction = mean + scale·output.
    Values { mean: f64, scale: f64 },
    /// One unit = log rate: prediction = exp(output).
    Counts,
}

/// A trained network: everything prediction needs, as plain serde data (it lives inside the
/// model JSON like every other backend's parameters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub conv: Option<ConvPart>,
    /// Hidden layers then the output layer.
    pub dense: Vec<Layer>,
    pub output: Output,
    /// Epochs actually run (early stopping may end training sooner).
    pub epochs_run: usize,
    /// Epoch whose weights were kept (the lowest validation loss), 1-based.
    pub best_epoch: usize,
}

/// What the network is fitted to.
pub enum NnTarget<'a> {
    Values(&'a [f64]),
    Classes { labels: &'a [usize], n_classes: usize, class_weights: &'a [f64] },
}

/// Network predictions for the rows.
pub enum NnPrediction {
    Values(Vec<f64>),
    Classes(Vec<usize>),
}

/// Which architecture to build.
pub enum Architecture<'a> {
    Mlp(&'a MlpSpec),
    Cnn1d(&'a Cnn1dSpec, SequenceLayout),
}

#[cfg(feature = "dl-burn")]
pub use engine::{fit_network, predict_network, softmax_cross_entropy_value};

#[cfg(not(feature = "dl-burn"))]
pub fn fit_network(_: Architecture<'_>, _: &ndarray::Array2<f64>, _: NnTarget<'_>, _: u64) -> Result<Network, ModelError> {
    Err(ModelError::Backend { model: "mlp/cnn1d", message: "built without the cargo feature `dl-burn`".into() })
}

#[cfg(not(feature = "dl-burn"))]
pub fn predict_network(_: &Network, _: &ndarray::Array2<f64>) -> Result<NnPrediction, ModelError> {
    Err(ModelError::Backend {
        model: "mlp/cnn1d",
        message: "this model file holds a neural network, and this build of neurostream left out the cargo feature `dl-burn`".into(),
    })
}

#[cfg(feature = "dl-burn")]
mod engine {
    use burn::module::Param;
    use burn::optim::{AdamConfig, GradientsParams};
    use burn::prelude::*;
    use burn::tensor::activation::{log_softmax, relu};
    use burn::tensor::module::{conv1d, linear, max_pool1d};
    use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
    use ndarray::Array2;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    use super::*;

    /// The trainable parameters (the architecture's sizes live in [`Network`]).
    #[derive(Module, Debug)]
    struct Net {
        conv_w: Vec<Param<Tensor<3>>>,
        conv_b: Vec<Param<Tensor<1>>>,
        dense_w: Vec<Param<Tensor<2>>>,
        dense_b: Vec<Param<Tensor<1>>>,
    }

    fn tensor1(v: &[f32], device: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
    }

    impl Net {
        fn from_network(n: &Network, device: &Device) -> Self {
            let (mut conv_w, mut conv_b) = (Vec::new(), Vec::new());
            if let Some(c) = &n.conv {
                for l in &c.blocks {
                    let w = Tensor::from_data(TensorData::new(l.weight.clone(), [l.n_out, l.n_in, c.kernel_size]), device);
                    conv_w.push(Param::from_tensor(w));
                    conv_b.push(Param::from_tensor(tensor1(&l.bias, device)));
                }
            }
            let (mut dense_w, mut dense_b) = (Vec::new(), Vec::new());
            for l in &n.dense {
                dense_w.push(Param::from_tensor(Tensor::from_data(TensorData::new(l.weight.clone(), [l.n_in, l.n_out]), device)));
                dense_b.push(Param::from_tensor(tensor1(&l.bias, device)));
            }
            Self { conv_w, conv_b, dense_w, dense_b }
        }

        /// Copies the current parameters back into `n`'s layers.
        fn store(&self, n: &mut Network) {
            let values = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().expect("f32 parameters");
            if let Some(c) = &mut n.conv {
                for (l, (w, b)) in c.blocks.iter_mut().zip(self.conv_w.iter().zip(&self.conv_b)) {
                    l.weight = values(w.val());
                    l.bias = b.val().into_data().try_to_vec::<f32>().expect("f32 parameters");
                }
            }
            for (l, (w, b)) in n.dense.iter_mut().zip(self.dense_w.iter().zip(&self.dense_b)) {
                l.weight = w.val().into_data().try_to_vec::<f32>().expect("f32 parameters");
                l.bias = b.val().into_data().try_to_vec::<f32>().expect("f32 parameters");
            }
        }

        /// Raw outputs (logits, standardized value or log rate) for `x` = [rows, features].
        /// `dropout` = (generator, probability) during training only.
        fn forward(&self, n: &Network, x: Tensor<2>, mut dropout: Option<(&mut StdRng, f64)>) -> Tensor<2> {
            let [rows, _] = x.dims();
            let mut h = x;
            if let Some(c) = &n.conv {
                let mut s: Tensor<3> = h.reshape([rows, c.layout.channels.len(), c.layout.length]);
                let pad = (c.kernel_size - 1) / 2;
                for (w, b) in self.conv_w.iter().zip(&self.conv_b) {
                    s = relu(conv1d(s, w.val(), Some(b.val()), ConvOptions::new([1], [pad], [1], 1)));
                    if c.pool > 1 {
                        s = max_pool1d(s, MaxPoolOptions::new([c.pool]));
                    }
                }
                let [_, ch, _] = s.dims();
                h = s.mean_dim(2).reshape([rows, ch]);
            }
            let last = self.dense_w.len() - 1;
            for (i, (w, b)) in self.dense_w.iter().zip(&self.dense_b).enumerate() {
                h = linear(h, w.val(), Some(b.val()));
                if i < last {
                    h = relu(h);
                    if let Some((rng, p)) = dropout.as_mut().filter(|(_, p)| *p > 0.0) {
                        let [r, width] = h.dims();
                        let keep = 1.0 / (1.0 - *p) as f32;
                        let mask: Vec<f32> = (0..r * width).map(|_| if rng.random::<f64>() < *p { 0.0 } else { keep }).collect();
                        h = h * Tensor::from_data(TensorData::new(mask, [r, width]), &w.val().device());
                    }
                }
            }
            h
        }

        /// λ/2·Σ‖W‖² over kernels and weight matrices.
        fn penalty(&self, lambda: f64) -> Option<Tensor<1>> {
            if lambda == 0.0 {
                return None;
            }
            let mut total: Option<Tensor<1>> = None;
            let mut add = |t: Tensor<1>| total = Some(match total.take() { Some(s) => s + t, None => t });
            for w in &self.conv_w {
                add(w.val().powi_scalar(2).sum());
            }
            for w in &self.dense_w {
                add(w.val().powi_scalar(2).sum());
            }
            total.map(|t| t.mul_scalar(lambda / 2.0))
        }
    }

    /// Softmax cross-entropy on logits [rows, classes], one softmax (inside log_softmax):
    /// Σ_i w_i·(−log_softmax(z_i)_{y_i}) / Σ_i w_i. `onehot` is [rows, classes], `w` the row weights.
    fn cross_entropy(logits: Tensor<2>, onehot: Tensor<2>, w: Tensor<1>, w_sum: f64) -> Tensor<1> {
        let [rows, _] = logits.dims();
        let per_row: Tensor<1> = log_softmax(logits, 1).mul(onehot).sum_dim(1).reshape([rows]).mul_scalar(-1.0);
        per_row.mul(w).sum().div_scalar(w_sum)
    }

    /// The cross-entropy of [`cross_entropy`] as a number, for the regression test against the
    /// textbook formula (study 2's double-softmax bug).
    pub fn softmax_cross_entropy_value(logits: &[Vec<f64>], labels: &[usize]) -> f64 {
        let device = Device::flex();
        let (rows, k) = (logits.len(), logits[0].len());
        let z: Vec<f32> = logits.iter().flatten().map(|&v| v as f32).collect();
        let onehot: Vec<f32> = labels.iter().flat_map(|&l| (0..k).map(move |c| if c == l { 1.0 } else { 0.0 })).collect();
        let loss = cross_entropy(
            Tensor::from_data(TensorData::new(z, [rows, k]), &device),
            Tensor::from_data(TensorData::new(onehot, [rows, k]), &device),
            Tensor::ones([rows], &device),
            rows as f64,
        );
        loss.into_scalar::<f32>() as f64
    }

    /// Uniform(−b, b) values from the seeded generator.
    fn uniform(rng: &mut StdRng, n: usize, bound: f64) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-bound..bound) as f32).collect()
    }

    /// Builds the layers with their initial weights: dense layers Glorot-uniform,
    /// b = √(6/(n_in + n_out)) for weights and biases (scikit-learn's MLP initialisation; Glorot &
    /// Bengio 2010, eq. 16); convolution kernels He-uniform b = √(6/(n_in·k)) (He et al. 2015,
    /// for ReLU), zero biases.
    fn initial_network(arch: &Architecture<'_>, n_features: usize, n_out: usize, output: Output, rng: &mut StdRng) -> Network {
        let mut conv = None;
        let (mut width, hidden) = match arch {
            Architecture::Mlp(s) => (n_features, s.hidden.clone()),
            Architecture::Cnn1d(s, layout) => {
                let mut n_in = layout.channels.len();
                let mut blocks = Vec::new();
                for &c in &s.channels {
                    let bound = (6.0 / (n_in * s.kernel_size) as f64).sqrt();
                    blocks.push(Layer { n_in, n_out: c, weight: uniform(rng, c * n_in * s.kernel_size, bound), bias: vec![0.0; c] });
                    n_in = c;
                }
                conv = Some(ConvPart { layout: layout.clone(), kernel_size: s.kernel_size, pool: s.pool, blocks });
                (n_in, s.hidden.clone())
            }
        };
        let mut dense = Vec::new();
        for &h in hidden.iter().chain(std::iter::once(&n_out)) {
            let bound = (6.0 / (width + h) as f64).sqrt();
            dense.push(Layer { n_in: width, n_out: h, weight: uniform(rng, width * h, bound), bias: uniform(rng, h, bound) });
            width = h;
        }
        Network { conv, dense, output, epochs_run: 0, best_epoch: 0 }
    }

    /// Row indices held out for early stopping: `fraction` of the rows (of each class when
    /// classifying), at least one, drawn by the seeded generator.
    fn holdout(target: &NnTarget<'_>, n: usize, fraction: f64, rng: &mut StdRng) -> Vec<bool> {
        let mut held = vec![false; n];
        if fraction == 0.0 {
            return held;
        }
        let groups: Vec<Vec<usize>> = match target {
            NnTarget::Values(_) => vec![(0..n).collect()],
            NnTarget::Classes { labels, n_classes, .. } => {
                (0..*n_classes).map(|k| (0..n).filter(|&i| labels[i] == k).collect()).collect()
            }
        };
        for mut g in groups {
            shuffle(&mut g, rng);
            let take = ((g.len() as f64 * fraction).round() as usize).min(g.len().saturating_sub(1));
            for &i in &g[..take] {
                held[i] = true;
            }
        }
        if !held.iter().any(|&h| h) {
            held[rng.random_range(0..n)] = true;
        }
        held
    }

    fn shuffle(v: &mut [usize], rng: &mut StdRng) {
        for i in (1..v.len()).rev() {
            let j = rng.random_range(0..=i);
            v.swap(i, j);
        }
    }

    /// Encoded targets for a set of rows, as tensors.
    struct Batch {
        x: Tensor<2>,
        y: Tensor<2>,
        w: Tensor<1>,
        w_sum: f64,
    }

    fn batch(x: &Array2<f64>, rows: &[usize], y: &[Vec<f32>], w: &[f32], device: &Device) -> Batch {
        let p = x.ncols();
        let mut xs = Vec::with_capacity(rows.len() * p);
        for &r in rows {
            xs.extend(x.row(r).iter().map(|&v| v as f32));
        }
        let k = y[0].len();
        let ys: Vec<f32> = rows.iter().flat_map(|&r| y[r].iter().copied()).collect();
        let ws: Vec<f32> = rows.iter().map(|&r| w[r]).collect();
        let w_sum = ws.iter().map(|&v| v as f64).sum();
        Batch {
            x: Tensor::from_data(TensorData::new(xs, [rows.len(), p]), device),
            y: Tensor::from_data(TensorData::new(ys, [rows.len(), k]), device),
            w: Tensor::from_data(TensorData::new(ws, [rows.len()]), device),
            w_sum,
        }
    }

    /// The data loss of one batch (mean over rows; weighted for classes).
    fn data_loss(out: Tensor<2>, b: &Batch, output: &Output) -> Tensor<1> {
        let [rows, _] = out.dims();
        match output {
            Output::Classes { .. } => cross_entropy(out, b.y.clone(), b.w.clone(), b.w_sum),
            Output::Values { .. } => (out - b.y.clone()).powi_scalar(2).mean().mul_scalar(0.5).reshape([1]),
            Output::Counts => {
                let eta: Tensor<1> = out.reshape([rows]);
                let y: Tensor<1> = b.y.clone().reshape([rows]);
                (eta.clone().exp() - y.mul(eta)).mean()
            }
        }
    }

    /// Trains the network with Adam on shuffled mini-batches; with a validation fraction, keeps the
    /// weights of the epoch with the lowest validation loss and stops after `patience` epochs
    /// without improvement.
    pub fn fit_network(arch: Architecture<'_>, x: &Array2<f64>, target: NnTarget<'_>, seed: u64) -> Result<Network, ModelError> {
        let (model, t) = match &arch {
            Architecture::Mlp(s) => ("mlp", s.training()),
            Architecture::Cnn1d(s, _) => ("cnn1d", s.training()),
        };
        let n = x.nrows();
        if n < 2 {
            return Err(ModelError::BadData(format!("{model}: {n} training rows; a network needs at least 2")));
        }
        if let Architecture::Cnn1d(s, layout) = &arch {
            let mut length = layout.length;
            for _ in &s.channels {
                length /= s.pool;
            }
            if length == 0 {
                return Err(ModelError::BadData(format!(
                    "cnn1d: traces of {} samples shrink to nothing after {} pooling blocks of width {}",
                    layout.length,
                    s.channels.len(),
                    s.pool
                )));
            }
        }
        let (y, w, output, n_out): (Vec<Vec<f32>>, Vec<f32>, Output, usize) = match &target {
            NnTarget::Classes { labels, n_classes, class_weights } => (
                labels.iter().map(|&l| (0..*n_classes).map(|k| if k == l { 1.0 } else { 0.0 }).collect()).collect(),
                labels.iter().map(|&l| class_weights[l] as f32).collect(),
                Output::Classes { n_classes: *n_classes },
                *n_classes,
            ),
            NnTarget::Values(v) if t.loss == NnLoss::Poisson => {
                if let Some(r) = v.iter().position(|&c| c < 0.0) {
                    return Err(ModelError::BadData(format!("{model} with loss = \"poisson\": target row {r} is {} < 0", v[r])));
                }
                (v.iter().map(|&c| vec![c as f32]).collect(), vec![1.0; n], Output::Counts, 1)
            }
            NnTarget::Values(v) => {
                let mean = v.iter().sum::<f64>() / n as f64;
                let sd = (v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
                let scale = if sd > 0.0 { sd } else { 1.0 };
                (v.iter().map(|&a| vec![((a - mean) / scale) as f32]).collect(), vec![1.0; n], Output::Values { mean, scale }, 1)
            }
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let mut network = initial_network(&arch, x.ncols(), n_out, output, &mut rng);
        let held = holdout(&target, n, t.validation_fraction, &mut rng);
        let mut train_rows: Vec<usize> = (0..n).filter(|&i| !held[i]).collect();
        let valid_rows: Vec<usize> = (0..n).filter(|&i| held[i]).collect();
        let device = Device::flex().autodiff();
        let plain = Device::flex();
        let mut net = Net::from_network(&network, &device);
        let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
        let valid = (!valid_rows.is_empty() && t.validation_fraction > 0.0).then(|| batch(x, &valid_rows, &y, &w, &plain));
        let mut best = f64::INFINITY;
        let mut since_best = 0;
        let mut best_net: Option<Network> = None;
        for epoch in 1..=t.epochs {
            shuffle(&mut train_rows, &mut rng);
            for rows in train_rows.chunks(t.batch_size) {
                let b = batch(x, rows, &y, &w, &device);
                let out = net.forward(&network, b.x.clone(), Some((&mut rng, t.dropout)));
                let mut loss = data_loss(out, &b, &network.output);
                if let Some(p) = net.penalty(t.weight_decay) {
                    loss = loss + p;
                }
                let grads = GradientsParams::from_grads(loss.backward(), &net);
                net = optim.step(t.learning_rate, net, grads);
            }
            network.epochs_run = epoch;
            let Some(v) = &valid else { continue };
            let out = net.valid().forward(&network, v.x.clone(), None);
            let loss = data_loss(out, v, &network.output).into_scalar::<f32>() as f64;
            if !loss.is_finite() {
                return Err(ModelError::Backend { model, message: format!("validation loss is {loss} at epoch {epoch}; lower learning_rate?") });
            }
            if loss < best {
                best = loss;
                since_best = 0;
                let mut snapshot = network.clone();
                net.store(&mut snapshot);
                snapshot.best_epoch = epoch;
                best_net = Some(snapshot);
            } else {
                since_best += 1;
                if since_best >= t.patience {
                    break;
                }
            }
        }
        let epochs_run = network.epochs_run;
        let mut network = match best_net {
            Some(b) => b,
            None => {
                net.store(&mut network);
                network.best_epoch = epochs_run;
                network
            }
        };
        network.epochs_run = epochs_run;
        if network.dense.iter().flat_map(|l| l.weight.iter()).any(|v| !v.is_finite()) {
            return Err(ModelError::Backend { model, message: "training diverged (non-finite weights); lower learning_rate?".into() });
        }
        Ok(network)
    }

    /// Predicts in chunks of 1024 rows on the plain (no-autodiff) device.
    pub fn predict_network(network: &Network, x: &Array2<f64>) -> Result<NnPrediction, ModelError> {
        let device = Device::flex();
        let net = Net::from_network(network, &device);
        let n_out = network.dense.last().map_or(0, |l| l.n_out);
        let expected = match &network.conv {
            Some(c) => c.layout.channels.len() * c.layout.length,
            None => network.dense[0].n_in,
        };
        if x.ncols() != expected {
            return Err(ModelError::BadData(format!("the network takes {expected} input columns, the table gives {}", x.ncols())));
        }
        let mut raw: Vec<f32> = Vec::with_capacity(x.nrows() * n_out);
        let rows: Vec<usize> = (0..x.nrows()).collect();
        for chunk in rows.chunks(1024) {
            let mut xs = Vec::with_capacity(chunk.len() * x.ncols());
            for &r in chunk {
                xs.extend(x.row(r).iter().map(|&v| v as f32));
            }
            let out = net.forward(network, Tensor::from_data(TensorData::new(xs, [chunk.len(), x.ncols()]), &device), None);
            raw.extend(out.into_data().try_to_vec::<f32>().map_err(|e| ModelError::Backend { model: "mlp/cnn1d", message: format!("{e:?}") })?);
        }
        Ok(match &network.output {
            Output::Classes { n_classes } => NnPrediction::Classes(
                raw.chunks(*n_classes)
                    .map(|z| (0..z.len()).fold(0, |best, k| if z[k] > z[best] { k } else { best }))
                    .collect(),
            ),
            Output::Values { mean, scale } => NnPrediction::Values(raw.iter().map(|&v| mean + scale * v as f64).collect()),
            Output::Counts => NnPrediction::Values(raw.iter().map(|&v| (v as f64).exp()).collect()),
        })
    }
}

#[cfg(all(test, feature = "dl-burn"))]
mod tests {
    use super::*;

    /// Study 2's bug was a softmax applied by the network and again by the loss. The loss must be
    /// the textbook cross-entropy of the *logits*: mean_i −log(exp(z_{i,y_i}) / Σ_k exp(z_{i,k})),
    /// here written out by hand; the double-softmax value is far from it, so the test can fail.
    #[test]
    fn double_softmax_regression_cross_entropy_is_textbook_on_logits() {
        let logits = vec![vec![2.0, 1.0, 0.1], vec![0.5, 2.5, -1.0], vec![-0.3, 0.2, 3.0]];
        let labels = [0, 2, 2];
        let textbook = |z: &[Vec<f64>]| {
            z.iter().zip(&labels).map(|(row, &y)| -(row[y].exp() / row.iter().map(|v| v.exp()).sum::<f64>()).ln()).sum::<f64>() / 3.0
        };
        // Row 0 by hand: exp(2) = 7.389056, exp(1) = 2.718282, exp(0.1) = 1.105171;
        // −ln(7.389056 / 11.212509) = 0.417030.
        assert!((-(7.389056f64 / 11.212509).ln() - 0.417030).abs() < 1e-6);
        let ours = softmax_cross_entropy_value(&logits, &labels);
        let expected = textbook(&logits);
        assert!((ours - expected).abs() < 1e-5, "cross-entropy {ours} vs textbook {expected}");
        let softmaxed: Vec<Vec<f64>> = logits
            .iter()
            .map(|r| {
                let s: f64 = r.iter().map(|v| v.exp()).sum();
                r.iter().map(|v| v.exp() / s).collect()
            })
            .collect();
        let double = textbook(&softmaxed);
        assert!((ours - double).abs() > 0.3, "double softmax {double} is indistinguishable from {ours}");
    }

    #[test]
    fn bad_layouts_are_named() {
        let names: Vec<String> = ["a[0]", "a[1]", "b[0]"].iter().map(|s| s.to_string()).collect();
        let e = sequence_layout(&names).unwrap_err().to_string();
        assert!(e.contains("`b` has 1 samples") && e.contains("`a` has 2"), "{e}");
        let e = sequence_layout(&["a[0]".to_string(), "rate".to_string()]).unwrap_err().to_string();
        assert!(e.contains("`rate` is a scalar column"), "{e}");
        let ok = sequence_layout(&["a[0]".into(), "a[1]".into(), "b[0]".into(), "b[1]".into()]).unwrap();
        assert_eq!(ok, SequenceLayout { channels: vec!["a".into(), "b".into()], length: 2 });
    }
}
