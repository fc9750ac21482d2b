//! Times the semantic cache's embedding of one text against candle's stock BERT (what the
//! data plane ran before its own encoder), alternating, on this thread:
//! `cargo run --release -p switchyard-data-plane --example embed -- MODEL_DIR [TEXT]`.
//! Pin it (`taskset -c 0`) and set `RAYON_NUM_THREADS=1` to measure one core as the data
//! plane uses it.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use switchyard_data_plane::cache::embed::{Model, cosine};

const LONG: &str = "Our team is planning a three day trip to Paris next spring and we would like some advice. We are interested in museums, especially the Louvre and the Musee d'Orsay, but we also want to try local food and walk along the Seine in the evening. Could you suggest a day by day itinerary that balances sightseeing with rest, and tell us which neighbourhoods are best for staying close to public transport and good cafes?";

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: embed MODEL_DIR [TEXT]")?;
    let text = args.next().unwrap_or_else(|| LONG.to_owned());
    let dir = Path::new(&dir);
    let model = Model::load(dir)?;
    let stock = Stock::load(dir)?;
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        a = model.embed_now(&text)?;
        ours.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        b = stock.embed(&text)?;
        theirs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    for (name, times) in [("switchyard", &mut ours), ("candle bert", &mut theirs)] {
        times.sort_by(f64::total_cmp);
        println!(
            "{name:>12}: p50 {:.1} ms, min {:.1} ms",
            times[times.len() / 2],
            times[0]
        );
    }
    println!("cosine between the two: {:.7}", cosine(&a, &b));
    Ok(())
}

/// candle-transformers' `BertModel`, mean-pooled and normalised.
struct Stock {
    bert: BertModel,
    tokenizer: tokenizers::Tokenizer,
}

impl Stock {
    fn load(dir: &Path) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let config: Config = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
        let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))?;
        tokenizer.with_padding(None);
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        Ok(Self {
            bert: BertModel::load(vb, &config)?,
            tokenizer,
        })
    }

    fn embed(&self, text: &str) -> Result<Vec<f32>, Box<dyn std::error::Error + Send + Sync>> {
        let enc = self.tokenizer.encode(text, true)?;
        let n = enc.get_ids().len().min(256);
        let t = |v: &[u32]| Tensor::from_slice(&v[..n], (1, n), &Device::Cpu);
        let hidden = self.bert.forward(
            &t(enc.get_ids())?,
            &t(enc.get_type_ids())?,
            Some(&t(enc.get_attention_mask())?),
        )?;
        let mean = (hidden.sum(1)? / n as f64)?.squeeze(0)?;
        let norm = mean.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        Ok((mean / f64::from(norm))?.to_vec1::<f32>()?)
    }
}
