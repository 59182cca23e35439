//! SentencePiece's BPE as llama.cpp runs it from a GGUF (`tokenizer.ggml.model =
//! llama`: Gemma, Llama 2, Mistral, TinyLlama).
//!
//! Spaces become `▁`, the text is split into characters, and the adjacent pair whose
//! joined text is a vocabulary entry with the highest score is merged, again and again
//! (ties: the leftmost). A character outside the vocabulary is spelled as its UTF-8
//! bytes' `<0xXX>` tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::Vocabulary;
use crate::llm::LlmError;

/// The space character's spelling in SentencePiece vocabularies.
const SPACE: &str = "\u{2581}";

/// A SentencePiece vocabulary: each entry's score, and the byte fallback tokens.
#[derive(Debug, Clone)]
pub(super) struct SentencePiece {
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
    /// The `<0xXX>` token of each byte.
    bytes: Vec<Option<u32>>,
    unknown: Option<u32>,
    add_space_prefix: bool,
}

/// Two adjacent symbols whose joined text is in the vocabulary.
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    /// Bytes of the joined text: a bigram whose symbols changed since is stale.
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bigram {
    /// The higher score first, then the leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// A run of the text: `start..start + len` bytes, linked to its neighbours.
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl SentencePiece {
    /// The model over `vocabulary`, with `scores` for its entries.
    ///
    /// # Errors
    /// When the scores do not match the entries.
    pub(super) fn new(
        vocabulary: &Vocabulary,
        scores: Vec<f32>,
        unknown: Option<u32>,
        add_space_prefix: bool,
    ) -> Result<Self, LlmError> {
        if scores.len() != vocabulary.pieces.len() {
            return Err(LlmError::Metadata(format!(
                "{} scores for {} tokens",
                scores.len(),
                vocabulary.pieces.len()
            )));
        }
        let mut ids = HashMap::with_capacity(vocabulary.pieces.len());
        for (id, piece) in vocabulary.pieces.iter().enumerate() {
            ids.insert(piece.clone(), id as u32);
        }
        let bytes = (0..=255u8)
            .map(|byte| ids.get(&format!("<0x{byte:02X}>")).copied())
            .collect();
        Ok(Self {
            ids,
            scores,
            bytes,
            unknown,
            add_space_prefix,
        })
    }

    /// Appends the ids of `text` (one fragment between user-defined tokens) to `out`;
    /// `first` says whether it starts the text, where a space prefix is added.
    pub(super) fn encode(
        &self,
        text: &str,
        first: bool,
        out: &mut Vec<u32>,
    ) -> Result<(), LlmError> {
        let mut escaped = String::with_capacity(text.len() + SPACE.len());
        if self.add_space_prefix && first {
            escaped.push_str(SPACE);
        }
        escaped.push_str(&text.replace(' ', SPACE));
        let text = escaped.as_str();

        let mut symbols: Vec<Symbol> = Vec::new();
        for (index, (start, c)) in text.char_indices().enumerate() {
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: index.checked_sub(1),
                next: Some(index + 1),
            });
        }
        if let Some(last) = symbols.last_mut() {
            last.next = None;
        }
        let mut queue = BinaryHeap::new();
        let try_pair = |symbols: &[Symbol],
                        queue: &mut BinaryHeap<Bigram>,
                        left: Option<usize>,
                        right: Option<usize>| {
            let (Some(left), Some(right)) = (left, right) else {
                return;
            };
            let start = symbols[left].start;
            let joined = &text[start..symbols[right].start + symbols[right].len];
            if let Some(&id) = self.ids.get(joined) {
                queue.push(Bigram {
                    left,
                    right,
                    score: self.scores[id as usize],
                    size: joined.len(),
                });
            }
        };
        for i in 1..symbols.len() {
            try_pair(&symbols, &mut queue, Some(i - 1), Some(i));
        }
        while let Some(bigram) = queue.pop() {
            let (left, right) = (&symbols[bigram.left], &symbols[bigram.right]);
            if left.len == 0 || right.len == 0 || left.len + right.len != bigram.size {
                continue;
            }
            let right_next = right.next;
            symbols[bigram.left].len += symbols[bigram.right].len;
            symbols[bigram.right].len = 0;
            symbols[bigram.left].next = right_next;
            if let Some(next) = right_next {
                symbols[next].prev = Some(bigram.left);
            }
            let prev = symbols[bigram.left].prev;
            try_pair(&symbols, &mut queue, prev, Some(bigram.left));
            try_pair(&symbols, &mut queue, Some(bigram.left), right_next);
        }
        let mut next = if symbols.is_empty() { None } else { Some(0) };
        while let Some(i) = next {
            // A merged symbol is a token by construction; a single character may not be.
            let piece = &text[symbols[i].start..symbols[i].start + symbols[i].len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => self.spell_bytes(piece, out)?,
            }
            next = symbols[i].next;
        }
        Ok(())
    }

    /// Appends the byte tokens of `piece` (the unknown token where a byte has none).
    fn spell_bytes(&self, piece: &str, out: &mut Vec<u32>) -> Result<(), LlmError> {
        for byte in piece.bytes() {
            match self.bytes[usize::from(byte)].or(self.unknown) {
                Some(id) => out.push(id),
                None => {
                    return Err(LlmError::Tokenizer(format!(
                        "byte 0x{byte:02X} has no token and the vocabulary no unknown token"
                    )))
                }
            }
        }
        Ok(())
    }
}

/// A normal piece's text: `▁` back to spaces.
pub(super) fn unescape(piece: &str) -> String {
    piece.replace(SPACE, " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(entries: &[(&str, f32)]) -> SentencePiece {
        let mut pieces: Vec<String> = entries.iter().map(|(p, _)| (*p).to_owned()).collect();
        let mut scores: Vec<f32> = entries.iter().map(|(_, s)| *s).collect();
        for byte in 0..=255u8 {
            pieces.push(format!("<0x{byte:02X}>"));
            scores.push(0.0);
        }
        let vocabulary = Vocabulary {
            pieces,
            kinds: Vec::new(),
        };
        SentencePiece::new(&vocabulary, scores, None, false).unwrap()
    }

    fn encode(model: &SentencePiece, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        model.encode(text, true, &mut out).unwrap();
        out
    }

    #[test]
    fn the_best_scored_pair_merges_first_and_ties_go_left() {
        // "ab" outscores "bc": a|b|c -> ab|c, whereas "bc" alone would win over "ab".
        let m = model(&[
            ("a", 0.0),
            ("b", 0.0),
            ("c", 0.0),
            ("ab", -1.0),
            ("bc", -2.0),
        ]);
        assert_eq!(encode(&m, "abc"), vec![3, 2]);
        let m = model(&[
            ("a", 0.0),
            ("b", 0.0),
            ("c", 0.0),
            ("ab", -2.0),
            ("bc", -1.0),
        ]);
        assert_eq!(encode(&m, "abc"), vec![0, 4]);
        // Equal scores: the leftmost pair merges.
        let m = model(&[("a", 0.0), ("aa", -1.0)]);
        assert_eq!(encode(&m, "aaa"), vec![1, 0]);
    }

    #[test]
    fn spaces_are_escaped_and_unknown_characters_fall_back_to_bytes() {
        let m = model(&[("\u{2581}", 0.0), ("x", 0.0), ("\u{2581}x", -1.0)]);
        // "é" is not in the vocabulary: its two UTF-8 bytes (0xC3 0xA9) are spelled.
        let byte = |b: u32| 3 + b;
        assert_eq!(encode(&m, " x\u{e9}"), vec![2, byte(0xC3), byte(0xA9)]);
        assert_eq!(unescape("\u{2581}x"), " x");
    }
}
