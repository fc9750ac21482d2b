//! The BERT encoder of the embedding model, written for what the semantic cache asks of it:
//! one text at a time (no padding, so no attention mask), on one CPU thread.
//!
//! Query, key and value are one matrix product; GELU and softmax are loops the compiler
//! vectorises (`libm`'s `erff` alone was 13% of an embedding through candle's op).

use candle_core::{Device, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct};

/// A linear layer `x · Wᵀ + b`.
struct Linear {
    /// `W` transposed, `[in, out]`, contiguous, so that the product reads it in place.
    wt: Tensor,
    b: Tensor,
}

impl Linear {
    /// `w` is `[out, in]` and `b` `[out]`, as stored.
    fn new(w: &Tensor, b: &Tensor) -> Result<Self> {
        Ok(Self {
            wt: w.t()?.contiguous()?,
            b: b.clone(),
        })
    }

    fn load(vb: &VarBuilder<'_>, outs: usize, ins: usize) -> Result<Self> {
        Self::new(&vb.get((outs, ins), "weight")?, &vb.get(outs, "bias")?)
    }

    /// `x` is `[tokens, in]`; the result `[tokens, out]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.wt)?.broadcast_add(&self.b)
    }
}

/// Layer normalisation over each token's features. candle's own runs on rayon's global pool,
/// which would put every embedding's norms through one shared thread.
struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    fn load(vb: VarBuilder<'_>, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            gamma: vb.get(size, "weight")?.to_vec1()?,
            beta: vb.get(size, "bias")?.to_vec1()?,
            eps: eps as f32,
        })
    }

    /// `x` is `[tokens, hidden]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let shape = x.shape().clone();
        let width = self.gamma.len();
        let mut v = x.flatten_all()?.to_vec1::<f32>()?;
        let inv = 1.0 / width as f32;
        for row in v.chunks_exact_mut(width) {
            // Two passes (mean, then squared deviations), as exact as the reference's.
            let mean = lanes(row, 0.0, |a, x| a + x, |a, b| a + b) * inv;
            for e in row.iter_mut() {
                *e -= mean;
            }
            let var = lanes(row, 0.0, |a, x| a + x * x, |a, b| a + b) * inv;
            let scale = 1.0 / (var + self.eps).sqrt();
            for ((e, g), b) in row.iter_mut().zip(&self.gamma).zip(&self.beta) {
                *e = *e * scale * g + b;
            }
        }
        Tensor::from_vec(v, shape, &Device::Cpu)
    }
}

struct Layer {
    /// Query, key and value, stacked: `[3 × hidden]` outputs.
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// A loaded encoder.
pub(super) struct Encoder {
    words: Tensor,
    positions: Tensor,
    token_types: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_size: usize,
    hidden: usize,
}

impl Encoder {
    /// The BERT weights under `vb` (names as Hugging Face's `BertModel` saves them).
    pub(super) fn load(vb: VarBuilder<'_>, config: &Config) -> Result<Self> {
        if !matches!(config.hidden_act, HiddenAct::Gelu) {
            candle_core::bail!("hidden_act must be \"gelu\"");
        }
        let hidden = config.hidden_size;
        let heads = config.num_attention_heads;
        if heads == 0 || !hidden.is_multiple_of(heads) {
            candle_core::bail!("hidden_size {hidden} is not a multiple of {heads} heads");
        }
        // Weights saved from a model with heads (BertForMaskedLM and alike) sit under the
        // model type's name, as candle's own loader also accepts.
        let vb = match &config.model_type {
            Some(prefix)
                if !vb.contains_tensor("embeddings.word_embeddings.weight")
                    && vb.contains_tensor(&format!(
                        "{prefix}.embeddings.word_embeddings.weight"
                    )) =>
            {
                vb.pp(prefix)
            }
            _ => vb,
        };
        let eps = config.layer_norm_eps;
        let inter = config.intermediate_size;
        let emb = vb.pp("embeddings");
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let vb = vb.pp(format!("encoder.layer.{i}"));
                let at = vb.pp("attention");
                let qkv = ["query", "key", "value"].map(|n| at.pp("self").pp(n));
                let stack = |name: &str, shape: &[usize]| {
                    let parts = qkv
                        .iter()
                        .map(|vb| vb.get(shape, name))
                        .collect::<Result<Vec<_>>>()?;
                    Tensor::cat(&parts, 0)
                };
                Ok(Layer {
                    qkv: Linear::new(
                        &stack("weight", &[hidden, hidden])?,
                        &stack("bias", &[hidden])?,
                    )?,
                    attention_out: Linear::load(&at.pp("output.dense"), hidden, hidden)?,
                    attention_norm: LayerNorm::load(at.pp("output.LayerNorm"), hidden, eps)?,
                    intermediate: Linear::load(&vb.pp("intermediate.dense"), inter, hidden)?,
                    output: Linear::load(&vb.pp("output.dense"), hidden, inter)?,
                    output_norm: LayerNorm::load(vb.pp("output.LayerNorm"), hidden, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            words: emb
                .pp("word_embeddings")
                .get((config.vocab_size, hidden), "weight")?,
            positions: emb
                .pp("position_embeddings")
                .get((config.max_position_embeddings, hidden), "weight")?,
            token_types: emb
                .pp("token_type_embeddings")
                .get((config.type_vocab_size, hidden), "weight")?,
            embeddings_norm: LayerNorm::load(emb.pp("LayerNorm"), hidden, eps)?,
            layers,
            heads,
            head_size: hidden / heads,
            hidden,
        })
    }

    /// The last hidden states, `[tokens, hidden]`, of one text's token and token-type ids.
    pub(super) fn forward(&self, ids: &[u32], types: &[u32]) -> Result<Tensor> {
        let n = ids.len();
        if n > self.positions.dim(0)? {
            candle_core::bail!("{n} tokens, more than the model's positions");
        }
        let dev = Device::Cpu;
        let words = self.words.index_select(&Tensor::new(ids, &dev)?, 0)?;
        let types = self
            .token_types
            .index_select(&Tensor::new(types, &dev)?, 0)?;
        let positions = self.positions.narrow(0, 0, n)?;
        let mut x = self
            .embeddings_norm
            .forward(&((words + types)? + positions)?)?;
        let scale = 1.0 / (self.head_size as f64).sqrt();
        for layer in &self.layers {
            // [tokens, 3 × hidden] → three [heads, tokens, head size].
            let qkv = layer.qkv.forward(&x)?;
            let part = |i: usize| {
                qkv.narrow(1, i * self.hidden, self.hidden)?
                    .reshape((n, self.heads, self.head_size))?
                    .transpose(0, 1)?
                    .contiguous()
            };
            let (q, k, v) = (part(0)?, part(1)?, part(2)?);
            let scores = (q.matmul(&k.t()?)? * scale)?;
            let probs = softmax_last_dim(&scores)?;
            let context = probs
                .matmul(&v)?
                .transpose(0, 1)?
                .reshape((n, self.hidden))?;
            let attended = layer
                .attention_norm
                .forward(&(layer.attention_out.forward(&context)? + &x)?)?;
            let inner = gelu(&layer.intermediate.forward(&attended)?)?;
            x = layer
                .output_norm
                .forward(&(layer.output.forward(&inner)? + &attended)?)?;
        }
        Ok(x)
    }
}

/// GELU with the exact error function, `x/2 · (1 + erf(x/√2))`, as BERT was trained with.
fn gelu(x: &Tensor) -> Result<Tensor> {
    let shape = x.shape().clone();
    let mut v = x.flatten_all()?.to_vec1::<f32>()?;
    for e in &mut v {
        *e = 0.5 * *e * (1.0 + erf(*e * std::f32::consts::FRAC_1_SQRT_2));
    }
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Softmax over the last dimension, with [`exp`] (vector code, unlike `expf`).
fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let shape = x.shape().clone();
    let width = shape.dims().last().copied().unwrap_or(1).max(1);
    let mut v = x.flatten_all()?.to_vec1::<f32>()?;
    for row in v.chunks_mut(width) {
        let max = lanes(row, f32::NEG_INFINITY, f32::max, f32::max);
        for e in row.iter_mut() {
            *e = exp(*e - max);
        }
        let inv = 1.0 / lanes(row, 0.0, |a, x| a + x, |a, b| a + b);
        for e in row.iter_mut() {
            *e *= inv;
        }
    }
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Folds `xs` with `step` in eight independent lanes, then joins the lanes with `join` (a
/// floating-point fold in one chain does not vectorise: its order is part of its result).
#[inline(always)]
fn lanes(
    xs: &[f32],
    init: f32,
    step: impl Fn(f32, f32) -> f32,
    join: impl Fn(f32, f32) -> f32,
) -> f32 {
    let mut acc = [init; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = step(*a, x);
        }
    }
    let joined = acc.into_iter().reduce(join).unwrap_or(init);
    rest.iter().fold(joined, |a, &x| step(a, x))
}

/// The error function to within 1e-6 (Abramowitz and Stegun 7.1.26, 1.5e-7, in f32), without branches or
/// library calls so that loops over it vectorise.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// `eˣ` to within a few ulp for `x` in [-87, 88] (clamped outside), without branches or
/// library calls: `2ⁿ · eʳ` with `n` the nearest integer to `x / ln 2` and a degree-6
/// polynomial for `eʳ`, `|r| ≤ ln 2 / 2`.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // Adding and subtracting 1.5 × 2²³ rounds to the nearest integer with plain SSE2.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n sits in the low bits of `shifted` (1.5 × 2²³ + n): 2ⁿ without a float-to-int
    // conversion.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_and_exp_match_the_library_to_single_precision() {
        let (mut erf_worst, mut exp_worst) = (0f64, 0f64);
        for i in -80_000..=80_000 {
            let x = i as f32 / 1000.0;
            let want = f64::from(x).exp();
            exp_worst = exp_worst.max(((f64::from(exp(x)) - want) / want).abs());
            if x.abs() <= 6.0 {
                let want = libm_erf(f64::from(x));
                erf_worst = erf_worst.max((f64::from(erf(x)) - want).abs());
            }
        }
        assert!(exp_worst < 1e-6, "exp: worst relative error {exp_worst}");
        assert!(erf_worst < 1e-6, "erf: worst error {erf_worst}");
    }

    /// candle's own erf in f64 (the function its `gelu_erf` uses).
    fn libm_erf(x: f64) -> f64 {
        Tensor::new(&[x], &Device::Cpu)
            .and_then(|t| t.erf())
            .and_then(|t| t.to_vec1::<f64>())
            .expect("erf")[0]
    }

    #[test]
    fn softmax_rows_sum_to_one_and_keep_order() {
        let x = Tensor::new(&[[1f32, 2.0, 3.0], [-50.0, 0.0, 50.0]], &Device::Cpu).unwrap();
        let y = softmax_last_dim(&x).unwrap().to_vec2::<f32>().unwrap();
        for row in &y {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert!(row[0] < row[1] && row[1] < row[2]);
        }
        assert!((y[0][2] - 0.665_240_9).abs() < 1e-6, "{y:?}");
    }
}
