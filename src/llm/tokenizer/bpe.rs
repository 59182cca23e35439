//! Byte-level BPE (`tokenizer.ggml.model = gpt2`) with the pre-tokenizer the file
//! declares in `tokenizer.ggml.pre`, as llama.cpp splits text for it.
//!
//! candle's own GGUF tokenizer helper mis-handles the `smollm` pre-tokenizer; what
//! matches llama.cpp there is a byte-level BPE whose pre-tokenizer first splits digits
//! one by one. Llama 3 and Qwen2 split by their regular expressions (digits in runs of
//! up to three, and one by one).

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::{TokenKind, Vocabulary};
use crate::llm::LlmError;

/// The pre-tokenizers reproduced, by `tokenizer.ggml.pre`.
pub(super) const SUPPORTED_PRE: [&str; 5] = ["default", "gpt2", "smollm", "llama-bpe", "qwen2"];

/// Llama 3's split (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_QWEN2`).
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A byte-level BPE that never parses special tokens out of user text.
#[derive(Debug, Clone)]
pub(super) struct BytePairs {
    inner: Tokenizer,
}

impl BytePairs {
    /// The model over `vocabulary` with its `merges` ("left right") and pre-tokenizer.
    ///
    /// # Errors
    /// When a merge is malformed or the pre-tokenizer is not one of [`SUPPORTED_PRE`].
    pub(super) fn new(
        vocabulary: &Vocabulary,
        merges: Vec<String>,
        pre: &str,
    ) -> Result<Self, LlmError> {
        let merges = merges
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
        let vocab: ahash::AHashMap<String, u32> = vocabulary
            .pieces
            .iter()
            .enumerate()
            .map(|(id, token)| (token.clone(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| LlmError::Tokenizer(e.to_string()))?;

        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        let special_tokens: Vec<AddedToken> = vocabulary
            .pieces
            .iter()
            .zip(&vocabulary.kinds)
            .filter(|(_, kind)| !matches!(kind, TokenKind::Normal | TokenKind::Byte))
            .map(|(token, _)| AddedToken::from(token.clone(), true))
            .collect();
        inner
            .add_special_tokens(special_tokens)
            .map_err(|e| LlmError::Tokenizer(e.to_string()))?;
        // User text is tokenized as plain text even where it spells a special token.
        inner.set_encode_special_tokens(true);
        Ok(Self { inner })
    }

    /// Appends the ids of `text` to `out`.
    pub(super) fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<(), LlmError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| LlmError::Tokenizer(e.to_string()))?;
        out.extend_from_slice(encoding.get_ids());
        Ok(())
    }

    /// The text of `ids` (normal and byte tokens).
    pub(super) fn decode(&self, ids: &[u32]) -> Result<String, LlmError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| LlmError::Tokenizer(e.to_string()))
    }
}

/// The pre-tokenizer llama.cpp runs for `pre`.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, LlmError> {
    let byte_level = |use_regex| ByteLevel::new(false, true, use_regex).into();
    let split = |pattern: &str| -> Result<PreTokenizerWrapper, LlmError> {
        Ok(Split::new(
            SplitPattern::Regex(pattern.to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| LlmError::Tokenizer(e.to_string()))?
        .into())
    };
    Ok(match pre {
        "default" | "gpt2" => byte_level(true),
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level(true)]).into(),
        "llama-bpe" => Sequence::new(vec![split(LLAMA3_SPLIT)?, byte_level(false)]).into(),
        "qwen2" => Sequence::new(vec![split(QWEN2_SPLIT)?, byte_level(false)]).into(),
        other => {
            return Err(LlmError::Metadata(format!(
                "pre-tokenizer `{other}` is not supported; supported: {}",
                SUPPORTED_PRE.join(", ")
            )))
        }
    })
}
