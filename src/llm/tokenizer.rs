//! The LLM's tokenizer, rebuilt from the GGUF metadata so that it reproduces
//! llama.cpp's ids for the same file.
//!
//! candle's own GGUF tokenizer helper mis-handles the `smollm` pre-tokenizer; what
//! matches llama.cpp is a byte-level BPE whose pre-tokenizer first splits digits one by
//! one. Tokens that are neither normal nor byte tokens become special tokens, which
//! user text must never produce.

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use super::LlmError;

/// GGUF `token_type` of an ordinary vocabulary entry.
const TOKEN_TYPE_NORMAL: i32 = 1;
/// GGUF `token_type` of a raw byte entry.
const TOKEN_TYPE_BYTE: i32 = 6;

/// A byte-level BPE tokenizer that never parses special tokens out of user text.
#[derive(Debug, Clone)]
pub struct LlmTokenizer {
    inner: Tokenizer,
    special: Vec<bool>,
}

fn metadata<'a>(
    content: &'a gguf_file::Content,
    key: &str,
) -> Result<&'a gguf_file::Value, LlmError> {
    content
        .metadata
        .get(key)
        .ok_or_else(|| LlmError::Metadata(format!("missing `{key}`")))
}

fn string_array(content: &gguf_file::Content, key: &str) -> Result<Vec<String>, LlmError> {
    metadata(content, key)?
        .to_vec()?
        .iter()
        .map(|v| v.to_string().cloned())
        .collect::<Result<_, _>>()
        .map_err(|e| LlmError::Metadata(format!("`{key}`: {e}")))
}

impl LlmTokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    ///
    /// # Errors
    /// When the metadata is missing, is not a `gpt2` (byte-level BPE) tokenizer, or is
    /// inconsistent.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self, LlmError> {
        let model = metadata(content, "tokenizer.ggml.model")?.to_string()?;
        if model != "gpt2" {
            return Err(LlmError::Metadata(format!(
                "tokenizer `{model}` is not supported; only byte-level BPE (`gpt2`) is"
            )));
        }
        let tokens = string_array(content, "tokenizer.ggml.tokens")?;
        let merges = string_array(content, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|merge| {
                // A merge is "left right"; the left part never holds a space because
                // byte-level BPE spells spaces as `Ġ`.
                merge
                    .split_once(' ')
                    .map(|(l, r)| (l.to_owned(), r.to_owned()))
                    .ok_or_else(|| LlmError::Metadata(format!("merge `{merge}` has no space")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let token_types: Vec<i32> = match content.metadata.get("tokenizer.ggml.token_type") {
            Some(value) => value
                .to_vec()?
                .iter()
                .map(|v| v.to_i32())
                .collect::<Result<_, _>>()?,
            None => vec![TOKEN_TYPE_NORMAL; tokens.len()],
        };
        if token_types.len() != tokens.len() {
            return Err(LlmError::Metadata(format!(
                "{} token types for {} tokens",
                token_types.len(),
                tokens.len()
            )));
        }

        let vocab: ahash::AHashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.clone(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| LlmError::Tokenizer(e.to_string()))?;

        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        let special: Vec<bool> = token_types
            .iter()
            .map(|&t| t != TOKEN_TYPE_NORMAL && t != TOKEN_TYPE_BYTE)
            .collect();
        let special_tokens: Vec<AddedToken> = tokens
            .iter()
            .zip(&special)
            .filter(|(_, &is_special)| is_special)
            .map(|(token, _)| AddedToken::from(token.clone(), true))
            .collect();
        inner
            .add_special_tokens(special_tokens)
            .map_err(|e| LlmError::Tokenizer(e.to_string()))?;
        // User text is tokenized as plain text even where it spells a special token.
        inner.set_encode_special_tokens(true);

        Ok(Self { inner, special })
    }

    /// Token ids of `text`, with no BOS and no special token parsed.
    ///
    /// # Errors
    /// When the tokenizer fails on the text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| LlmError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids of `text` together with each token's vocabulary string.
    ///
    /// # Errors
    /// When the tokenizer fails on the text.
    pub fn encode_with_pieces(&self, text: &str) -> Result<(Vec<u32>, Vec<String>), LlmError> {
        let ids = self.encode(text)?;
        let pieces = ids
            .iter()
            .map(|&id| self.inner.id_to_token(id).unwrap_or_default())
            .collect();
        Ok((ids, pieces))
    }

    /// The text of `ids`, with special tokens left out.
    ///
    /// # Errors
    /// When an id is outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String, LlmError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| LlmError::Tokenizer(e.to_string()))
    }

    /// Whether `id` is a control token (end of text, chat markers...).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The number of entries in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.special.len()
    }
}
