//! The `local-minilm` embedder: sentence-transformers/all-MiniLM-L6-v2 run in-process with
//! candle on the CPU (f32), reproducing sentence-transformers exactly: BERT tokenizer with
//! special tokens, truncation at `max_tokens`, mean pooling over the attention mask, then
//! L2 normalisation.
//!
//! Weights come from `scripts/setup-model` (a directory with `model.safetensors`,
//! `tokenizer.json` and `config.json`). A call to [`Embedder::embed`] may be arbitrarily
//! large: texts are sorted by token length and run in sub-batches, each padded only to its
//! own longest text, and the vectors come back in input order.
//!
//! Sub-batches are bounded so that no intermediate tensor exceeds ~25 MB
//! ([`MAX_SUB_BATCH_PADDED_TOKENS`], [`MAX_SUB_BATCH_ATTENTION_CELLS`]): this keeps peak memory
//! of 32 texts of 256 tokens at ~300 MB instead of ~700 MB, at no cost in speed.
//!
//! Performance note: candle allocates a fresh buffer per operation, and with long texts glibc
//! returns those buffers to the kernel and faults them in again (over a quarter of the CPU time at
//! 256 tokens). The `freshet` binary and the benches therefore use mimalloc as the global
//! allocator (see `src/main.rs`); a program embedding the library should do the same.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::utils::padding::{pad_encodings, PaddingDirection, PaddingParams, PaddingStrategy};
use tokenizers::utils::truncation::TruncationParams;
use tokenizers::{Encoding, Tokenizer};

use super::hash::estimate_tokens;
use super::{EmbedError, Embedder};

/// The model id written into every point's payload.
pub const MODEL_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Most texts in one forward pass.
pub const MAX_SUB_BATCH_TEXTS: usize = 64;

/// Most padded tokens (texts × longest text) in one forward pass: the feed-forward
/// activations are `tokens × 1536` floats (25 MB at 4096).
pub const MAX_SUB_BATCH_PADDED_TOKENS: usize = 4096;

/// Most attention cells (texts × longest text²) in one forward pass: the attention scores are
/// `cells × 12 heads` floats (25 MB at 2¹⁹, i.e. 8 texts of 256 tokens or 32 of 128).
pub const MAX_SUB_BATCH_ATTENTION_CELLS: usize = 1 << 19;

/// all-MiniLM-L6-v2 on the CPU (see module docs). Cheap to share: `embed` takes `&self`
/// and the type is `Send + Sync`; concurrent calls share the model weights.
pub struct LocalMiniLm {
    model: BertModel,
    /// Truncates at `max_tokens`, never pads (padding is applied per sub-batch).
    tokenizer: Tokenizer,
    /// Neither truncates nor pads: exact token counts for [`Embedder::count_tokens`].
    counting_tokenizer: Tokenizer,
    padding: PaddingParams,
    dimension: usize,
    max_tokens: usize,
    device: Device,
}

impl std::fmt::Debug for LocalMiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalMiniLm")
            .field("model_id", &MODEL_ID)
            .field("dimension", &self.dimension)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

impl LocalMiniLm {
    /// Load from a directory with `model.safetensors`, `tokenizer.json` and `config.json`.
    /// Texts longer than `max_tokens` tokens (special tokens included; the model was trained
    /// with 256) are truncated.
    ///
    /// Missing or unreadable files are [`EmbedError::Transient`] (running
    /// `scripts/setup-model` fixes them); a `max_tokens` the model cannot take (fewer than 3
    /// or more than its position embeddings) is [`EmbedError::Permanent`].
    pub fn load(model_dir: &Path, max_tokens: usize) -> Result<Self, EmbedError> {
        let load_err = |file: &str, e: &dyn std::fmt::Display| {
            EmbedError::Transient(format!("loading {}: {e} (run scripts/setup-model)", model_dir.join(file).display()))
        };

        let config_path = model_dir.join("config.json");
        let config_text = std::fs::read_to_string(&config_path).map_err(|e| load_err("config.json", &e))?;
        let config: Config = serde_json::from_str(&config_text).map_err(|e| load_err("config.json", &e))?;
        // [CLS] + at least one token + [SEP], and no more than the position embeddings.
        if max_tokens < 3 || max_tokens > config.max_position_embeddings {
            return Err(EmbedError::Permanent(format!(
                "max_tokens {max_tokens} must be between 3 and {} for {}",
                config.max_position_embeddings,
                model_dir.display()
            )));
        }

        let mut counting_tokenizer =
            Tokenizer::from_file(model_dir.join("tokenizer.json")).map_err(|e| load_err("tokenizer.json", &e))?;
        // The shipped tokenizer.json pads and truncates to a fixed 128; we do neither here.
        counting_tokenizer.with_padding(None);
        counting_tokenizer.with_truncation(None).map_err(|e| load_err("tokenizer.json", &e))?;

        let mut tokenizer = counting_tokenizer.clone();
        let truncation =
            TruncationParams { max_length: max_tokens, ..tokenizer.get_truncation().cloned().unwrap_or_default() };
        tokenizer.with_truncation(Some(truncation)).map_err(|e| load_err("tokenizer.json", &e))?;

        let pad_token = "[PAD]";
        let pad_id = tokenizer
            .token_to_id(pad_token)
            .ok_or_else(|| load_err("tokenizer.json", &format_args!("no {pad_token} token in the vocabulary")))?;
        let padding = PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: pad_token.to_owned(),
        };

        let device = Device::Cpu;
        let weights =
            std::fs::read(model_dir.join("model.safetensors")).map_err(|e| load_err("model.safetensors", &e))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|e| load_err("model.safetensors", &e))?;
        let model = BertModel::load(vb, &config).map_err(|e| load_err("model.safetensors", &e))?;

        Ok(Self { model, tokenizer, counting_tokenizer, padding, dimension: config.hidden_size, max_tokens, device })
    }

    /// The truncation length, in tokens.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// One forward pass over `encodings` (already truncated, padded to the same length):
    /// mean pooling over the attention mask, then L2 normalisation.
    fn forward(&self, encodings: &[Encoding]) -> candle_core::Result<Vec<Vec<f32>>> {
        let rows = encodings.len();
        let len = encodings.first().map_or(0, Encoding::len);
        let mut ids = Vec::with_capacity(rows * len);
        let mut type_ids = Vec::with_capacity(rows * len);
        let mut mask = Vec::with_capacity(rows * len);
        for e in encodings {
            ids.extend_from_slice(e.get_ids());
            type_ids.extend_from_slice(e.get_type_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let ids = Tensor::from_vec(ids, (rows, len), &self.device)?;
        let type_ids = Tensor::from_vec(type_ids, (rows, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, len), &self.device)?;

        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?; // (rows, len, dim)
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (rows, len, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (rows, dim)
        let counts = mask.sum(1)?.maximum(1e-9)?; // (rows, 1), as sentence-transformers clamps
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?; // torch F.normalize eps
        mean.broadcast_div(&norms)?.to_vec2::<f32>()
    }
}

/// Whether `texts` texts padded to `len` tokens stay within the sub-batch bounds.
fn fits(texts: usize, len: usize) -> bool {
    texts <= MAX_SUB_BATCH_TEXTS
        && texts * len <= MAX_SUB_BATCH_PADDED_TOKENS
        && texts * len * len <= MAX_SUB_BATCH_ATTENTION_CELLS
}

impl Embedder for LocalMiniLm {
    fn model_id(&self) -> &str {
        MODEL_ID
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    /// Exact: the tokenizer's count with `[CLS]`/`[SEP]`, before truncation (so it may exceed
    /// `max_tokens`). Falls back to an estimate if the tokenizer rejects the text.
    fn count_tokens(&self, text: &str) -> usize {
        match self.counting_tokenizer.encode(text, true) {
            Ok(encoding) => encoding.len(),
            Err(_) => estimate_tokens(text),
        }
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Permanent(format!("tokenizing: {e}")))?;

        // Shortest first, so each sub-batch is padded only to about its own length.
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].len());

        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        let mut start = 0;
        while start < order.len() {
            // Sorted ascending, so the last text taken is the longest: grow while it fits.
            let mut end = start + 1;
            while end < order.len() && fits(end - start + 1, encodings[order[end]].len()) {
                end += 1;
            }
            let mut batch: Vec<Encoding> =
                order[start..end].iter().map(|&i| std::mem::take(&mut encodings[i])).collect();
            pad_encodings(&mut batch, &self.padding).map_err(|e| EmbedError::Permanent(format!("padding: {e}")))?;
            let vectors =
                self.forward(&batch).map_err(|e| EmbedError::Permanent(format!("running {MODEL_ID}: {e}")))?;
            if vectors.len() != end - start {
                return Err(EmbedError::Permanent(format!(
                    "{MODEL_ID} returned {} vectors for {} texts",
                    vectors.len(),
                    end - start
                )));
            }
            for (&i, v) in order[start..end].iter().zip(vectors) {
                out[i] = v;
            }
            start = end;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<LocalMiniLm>();
    }

    #[test]
    fn missing_directory_is_transient_and_names_the_path() {
        let err = LocalMiniLm::load(Path::new("/nonexistent/minilm"), 256).expect_err("no model");
        assert!(err.is_transient());
        assert!(err.to_string().contains("/nonexistent/minilm"), "{err}");
    }
}
