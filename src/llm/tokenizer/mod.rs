//! The LLM's tokenizer, rebuilt from the GGUF metadata so that it reproduces
//! llama.cpp's ids for the same file.
//!
//! Two models, as `tokenizer.ggml.model` names them: byte-level BPE (`gpt2`: SmolLM2,
//! Llama 3, Qwen, [`bpe`]) and SentencePiece (`llama`: Gemma, Llama 2, Mistral, [`spm`]).
//! Before either runs, the vocabulary's user-defined tokens (Gemma's runs of newlines
//! and spaces, say) are cut out of the text, longest first, as llama.cpp does; control
//! tokens are never parsed out of user text, which stays plain text whatever it spells;
//! they are parsed only out of markup a chat template wrote ([`Segment::Markup`]).

mod bpe;
mod spm;

use candle_core::quantized::gguf_file;

use super::LlmError;
use bpe::BytePairs;
use spm::SentencePiece;

/// Spellings llama.cpp treats as control tokens whatever type the file gives them (end
/// of turn or text, fill-in-the-middle markers): Gemma 3's files mark `</s>` as
/// user-defined, and llama.cpp neither cuts it out of user text nor lets it through.
const CONTROL_LOOKING: [&str; 38] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "<end_of_utterance>",
    "<|eom_id|>",
    "</s>",
    "<|return|>",
    "<|call|>",
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<PRE>",
    "\u{2581}<PRE>",
    "<|fim\u{2581}begin|>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<SUF>",
    "\u{2581}<SUF>",
    "<|fim\u{2581}hole|>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<MID>",
    "\u{2581}<MID>",
    "<|fim\u{2581}end|>",
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<file_sep>",
];

/// What a vocabulary entry is, from GGUF's `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenKind {
    fn from_gguf(code: i32) -> Self {
        match code {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }

    /// Control, unknown and unused entries: never produced from user text, left out
    /// of decoded text, and the end of a generation.
    fn is_special(self) -> bool {
        matches!(self, Self::Unknown | Self::Control | Self::Unused)
    }
}

/// The vocabulary's entries and their kinds, by id.
#[derive(Debug, Clone)]
struct Vocabulary {
    pieces: Vec<String>,
    kinds: Vec<TokenKind>,
}

impl Vocabulary {
    /// The non-empty entries of `kinds`, longest first: the order they are cut out of
    /// text in.
    fn longest_first(&self, kinds: &[TokenKind]) -> Vec<u32> {
        let mut ids: Vec<u32> = (0..self.pieces.len() as u32)
            .filter(|&id| {
                kinds.contains(&self.kinds[id as usize]) && !self.pieces[id as usize].is_empty()
            })
            .collect();
        ids.sort_by_key(|&id| std::cmp::Reverse(self.pieces[id as usize].len()));
        ids
    }
}

/// The subword model.
#[derive(Debug, Clone)]
enum Model {
    BytePairs(Box<BytePairs>),
    SentencePiece(SentencePiece),
}

/// A piece of a prompt and whose words it is: markup (a chat template's text, in which
/// control tokens such as `<|im_start|>` are parsed) or text from a user (always plain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Text written by the model's chat template.
    Markup(&'a str),
    /// Text a user sent.
    Plain(&'a str),
}

/// A piece of text: plain text for the model, or a token found in it.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

/// The tokenizer a GGUF describes.
#[derive(Debug, Clone)]
pub struct LlmTokenizer {
    vocabulary: Vocabulary,
    model: Model,
    /// User-defined tokens, longest first: cut out of the text before the model runs.
    user_defined: Vec<u32>,
    /// User-defined and control tokens, longest first: cut out of markup.
    markup_tokens: Vec<u32>,
    /// The token a prompt starts with, where the model wants one.
    bos: Option<u32>,
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

fn optional_bool(content: &gguf_file::Content, key: &str) -> Option<bool> {
    content.metadata.get(key).and_then(|v| v.to_bool().ok())
}

fn optional_id(content: &gguf_file::Content, key: &str) -> Option<u32> {
    content.metadata.get(key).and_then(|v| v.to_u32().ok())
}

impl LlmTokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    ///
    /// # Errors
    /// When the metadata is missing or inconsistent, or names a model or pre-tokenizer
    /// that is not supported (the message names those that are).
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self, LlmError> {
        let model_name = metadata(content, "tokenizer.ggml.model")?
            .to_string()?
            .clone();
        let pieces = string_array(content, "tokenizer.ggml.tokens")?;
        let kinds: Vec<TokenKind> = match content.metadata.get("tokenizer.ggml.token_type") {
            Some(value) => value
                .to_vec()?
                .iter()
                .map(|v| v.to_i32().map(TokenKind::from_gguf))
                .collect::<Result<_, _>>()?,
            None => vec![TokenKind::Normal; pieces.len()],
        };
        if kinds.len() != pieces.len() {
            return Err(LlmError::Metadata(format!(
                "{} token types for {} tokens",
                kinds.len(),
                pieces.len()
            )));
        }
        let kinds = kinds
            .into_iter()
            .zip(&pieces)
            .map(|(kind, piece)| {
                if kind != TokenKind::Byte && CONTROL_LOOKING.contains(&piece.as_str()) {
                    TokenKind::Control
                } else {
                    kind
                }
            })
            .collect();
        let vocabulary = Vocabulary { pieces, kinds };
        let sentence_piece = model_name == "llama";
        let model = match model_name.as_str() {
            "gpt2" => {
                let pre = content
                    .metadata
                    .get("tokenizer.ggml.pre")
                    .and_then(|v| v.to_string().ok())
                    .map_or("default", String::as_str);
                let merges = string_array(content, "tokenizer.ggml.merges")?;
                Model::BytePairs(Box::new(BytePairs::new(&vocabulary, merges, pre)?))
            }
            "llama" => {
                let scores = match content.metadata.get("tokenizer.ggml.scores") {
                    Some(value) => value
                        .to_vec()?
                        .iter()
                        .map(gguf_file::Value::to_f32)
                        .collect::<Result<_, _>>()?,
                    None => vec![0.0; vocabulary.pieces.len()],
                };
                Model::SentencePiece(SentencePiece::new(
                    &vocabulary,
                    scores,
                    optional_id(content, "tokenizer.ggml.unknown_token_id"),
                    optional_bool(content, "tokenizer.ggml.add_space_prefix").unwrap_or(true),
                )?)
            }
            other => {
                return Err(LlmError::Metadata(format!(
                    "tokenizer `{other}` is not supported; supported: `gpt2` (byte-level BPE) and `llama` (SentencePiece)"
                )))
            }
        };
        // llama.cpp's defaults where the file is silent: SentencePiece models start
        // with BOS, byte-level BPE ones do not.
        let add_bos =
            optional_bool(content, "tokenizer.ggml.add_bos_token").unwrap_or(sentence_piece);
        let bos = optional_id(content, "tokenizer.ggml.bos_token_id")
            .filter(|&id| add_bos && (id as usize) < vocabulary.pieces.len());
        let user_defined = vocabulary.longest_first(&[TokenKind::UserDefined]);
        let markup_tokens = vocabulary.longest_first(&[TokenKind::UserDefined, TokenKind::Control]);
        Ok(Self {
            vocabulary,
            model,
            user_defined,
            markup_tokens,
            bos,
        })
    }

    /// The token every prompt starts with, where the model wants one (Gemma's `<bos>`).
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Token ids of `text` as a whole prompt: BOS where the model wants one, then the
    /// text's.
    ///
    /// # Errors
    /// When the tokenizer fails on the text.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        let mut ids: Vec<u32> = self.bos.into_iter().collect();
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// Token ids of `text`, with no BOS and no control token parsed.
    ///
    /// # Errors
    /// When the tokenizer fails on the text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        self.encode_segments(&[Segment::Plain(text)])
    }

    /// Token ids of a chat prompt: control tokens parsed out of its markup only, then
    /// BOS in front where the model wants one and the markup did not write it.
    ///
    /// # Errors
    /// When the tokenizer fails on the text.
    pub fn encode_chat(&self, segments: &[Segment<'_>]) -> Result<Vec<u32>, LlmError> {
        let mut ids = self.encode_segments(segments)?;
        if let Some(bos) = self.bos.filter(|&bos| ids.first() != Some(&bos)) {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Token ids of `segments` as one text: the model runs over each stretch of text
    /// between the tokens cut out, whichever segments it spans.
    fn encode_segments(&self, segments: &[Segment<'_>]) -> Result<Vec<u32>, LlmError> {
        let mut fragments = Vec::new();
        for segment in segments {
            let (text, tokens) = match *segment {
                Segment::Markup(text) => (text, &self.markup_tokens),
                Segment::Plain(text) => (text, &self.user_defined),
            };
            fragments.extend(self.partition(text, tokens));
        }
        let mut ids = Vec::new();
        let mut text = String::new();
        for fragment in fragments {
            match fragment {
                Fragment::Text(piece) => text.push_str(piece),
                Fragment::Token(id) => {
                    self.encode_text(&text, &mut ids)?;
                    text.clear();
                    ids.push(id);
                }
            }
        }
        self.encode_text(&text, &mut ids)?;
        Ok(ids)
    }

    /// Appends the ids of a stretch of text with no token cut out of it.
    fn encode_text(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), LlmError> {
        if text.is_empty() {
            return Ok(());
        }
        match &self.model {
            Model::BytePairs(model) => model.encode(text, ids),
            // Every stretch starts the text or follows a token: where llama.cpp adds
            // SentencePiece's space prefix.
            Model::SentencePiece(model) => model.encode(text, true, ids),
        }
    }

    /// `text` cut at the `tokens` it holds: each token, longest first, is found in the
    /// text left between those already cut out (llama.cpp's order).
    fn partition<'a>(&self, text: &'a str, tokens: &[u32]) -> Vec<Fragment<'a>> {
        let mut fragments = vec![Fragment::Text(text)];
        for &id in tokens {
            let token = self.vocabulary.pieces[id as usize].as_str();
            if !text.contains(token) {
                continue;
            }
            fragments = fragments
                .into_iter()
                .flat_map(|fragment| match fragment {
                    Fragment::Text(text) if text.contains(token) => {
                        let mut cut = Vec::new();
                        let mut rest = text;
                        while let Some(at) = rest.find(token) {
                            if at > 0 {
                                cut.push(Fragment::Text(&rest[..at]));
                            }
                            cut.push(Fragment::Token(id));
                            rest = &rest[at + token.len()..];
                        }
                        if !rest.is_empty() {
                            cut.push(Fragment::Text(rest));
                        }
                        cut
                    }
                    other => vec![other],
                })
                .collect();
        }
        fragments
    }

    /// Token ids of `text` together with each token's vocabulary string.
    ///
    /// # Errors
    /// When the tokenizer fails on the text.
    pub fn encode_with_pieces(&self, text: &str) -> Result<(Vec<u32>, Vec<String>), LlmError> {
        let ids = self.encode(text)?;
        let pieces = ids
            .iter()
            .map(|&id| {
                self.vocabulary
                    .pieces
                    .get(id as usize)
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        Ok((ids, pieces))
    }

    /// The text of `ids`, with control tokens left out.
    ///
    /// # Errors
    /// When an id is outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String, LlmError> {
        if let Some(&unknown) = ids.iter().find(|&&id| id as usize >= self.vocab_size()) {
            return Err(LlmError::Tokenizer(format!(
                "token {unknown} is not in the vocabulary of {}",
                self.vocab_size()
            )));
        }
        let mut bytes = Vec::new();
        let mut run: Vec<u32> = Vec::new();
        for &id in ids {
            let kind = self.vocabulary.kinds[id as usize];
            if kind.is_special() {
                continue;
            }
            if kind == TokenKind::UserDefined {
                bytes.extend(self.decode_run(&std::mem::take(&mut run))?);
                bytes.extend_from_slice(self.vocabulary.pieces[id as usize].as_bytes());
            } else {
                run.push(id);
            }
        }
        bytes.extend(self.decode_run(&run)?);
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The bytes of a run of normal and byte tokens.
    fn decode_run(&self, ids: &[u32]) -> Result<Vec<u8>, LlmError> {
        match &self.model {
            Model::BytePairs(model) => Ok(model.decode(ids)?.into_bytes()),
            Model::SentencePiece(_) => {
                let mut bytes = Vec::new();
                for &id in ids {
                    let piece = &self.vocabulary.pieces[id as usize];
                    match self.vocabulary.kinds[id as usize] {
                        TokenKind::Byte => bytes.extend(byte_token(piece)),
                        _ => bytes.extend_from_slice(spm::unescape(piece).as_bytes()),
                    }
                }
                Ok(bytes)
            }
        }
    }

    /// Whether `id` is a control token (end of text, chat markers...).
    pub fn is_special(&self, id: u32) -> bool {
        self.vocabulary
            .kinds
            .get(id as usize)
            .is_some_and(|kind| kind.is_special())
    }

    /// The number of entries in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocabulary.pieces.len()
    }
}

/// The byte a `<0xXX>` token stands for.
fn byte_token(piece: &str) -> Option<u8> {
    piece
        .strip_prefix("<0x")
        .and_then(|hex| hex.strip_suffix('>'))
        .and_then(|hex| u8::from_str_radix(hex, 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokens_name_their_byte() {
        assert_eq!(byte_token("<0x0A>"), Some(10));
        assert_eq!(byte_token("<0xFF>"), Some(255));
        assert_eq!(byte_token("<0xG1>"), None);
        assert_eq!(byte_token("0x0A"), None);
    }
}
