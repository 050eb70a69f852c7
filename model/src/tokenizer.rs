//! Characters to token ids and back.
//!
//! Ids 0..3 are the special tokens (pad, start, end); every charset character then gets one id
//! in charset order, so the ids of a trained model depend only on the charset string stored in
//! its manifest.

use std::collections::HashMap;

use anyhow::{bail, Result};

/// Maps the characters of a charset to token ids (`PAD`, `BOS`, `EOS`, then one id per char).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenizer {
    charset: String,
    chars: Vec<char>,
    ids: HashMap<char, i64>,
}

impl Tokenizer {
    /// Padding after the end of a target sequence.
    pub const PAD: i64 = 0;
    /// Start of sequence: the decoder's first input.
    pub const BOS: i64 = 1;
    /// End of sequence: the decoder's last output.
    pub const EOS: i64 = 2;
    /// Number of special ids before the first character id.
    const SPECIALS: i64 = 3;

    /// A tokenizer for `charset`. A character repeated in the charset keeps its first id (the
    /// later occurrences are ignored), so a sloppy charset cannot make two ids decode alike.
    pub fn new(charset: &str) -> Self {
        let mut chars = Vec::new();
        let mut ids = HashMap::new();
        for c in charset.chars() {
            if let std::collections::hash_map::Entry::Vacant(e) = ids.entry(c) {
                e.insert(Self::SPECIALS + chars.len() as i64);
                chars.push(c);
            }
        }
        Self {
            charset: charset.to_string(),
            chars,
            ids,
        }
    }

    /// Number of distinct ids, special tokens included.
    pub fn vocab_size(&self) -> i64 {
        Self::SPECIALS + self.chars.len() as i64
    }

    /// The charset this tokenizer was built from, as given.
    pub fn charset(&self) -> &str {
        &self.charset
    }

    /// Whether `c` has an id.
    pub fn contains(&self, c: char) -> bool {
        self.ids.contains_key(&c)
    }

    /// The id of each character of `text` (no `BOS`/`EOS`). Fails on the first character that
    /// is not in the charset, naming it and its position.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let mut out = Vec::with_capacity(text.len());
        for (pos, c) in text.chars().enumerate() {
            match self.ids.get(&c) {
                Some(&id) => out.push(id),
                None => bail!(
                    "character {c:?} (U+{:04X}) at position {pos} of {text:?} is not in the charset",
                    c as u32
                ),
            }
        }
        Ok(out)
    }

    /// The text of `ids`: special and unknown ids are skipped, and decoding stops at the first
    /// `EOS` (whatever a decoder emits after it is not part of the prediction).
    pub fn decode(&self, ids: &[i64]) -> String {
        let mut out = String::with_capacity(ids.len());
        for &id in ids {
            if id == Self::EOS {
                break;
            }
            if id >= Self::SPECIALS {
                if let Some(&c) = self.chars.get((id - Self::SPECIALS) as usize) {
                    out.push(c);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use textrec_contract::charset::IAM_CHARSET;

    #[test]
    fn ids_follow_charset_order_after_specials() {
        let t = Tokenizer::new("ab c");
        assert_eq!(t.vocab_size(), 7);
        assert_eq!(t.encode("a").unwrap(), vec![3]);
        assert_eq!(t.encode("cab").unwrap(), vec![6, 3, 4]);
        assert_eq!(t.encode(" ").unwrap(), vec![5]);
        assert_eq!(t.charset(), "ab c");
    }

    #[test]
    fn iam_charset_round_trips() {
        let t = Tokenizer::new(IAM_CHARSET);
        assert_eq!(t.vocab_size(), 82);
        let text = "A MOVE to stop Mr. Gaitskell (1960): \"no!\" #3 & 4+5*6/7; ok? it's-";
        let ids = t.encode(text).unwrap();
        assert!(ids.iter().all(|&i| (3..82).contains(&i)));
        assert_eq!(t.decode(&ids), text);
    }

    #[test]
    fn encode_names_the_first_unsupported_char() {
        let t = Tokenizer::new(IAM_CHARSET);
        let err = t.encode("price: $5 or 4€").unwrap_err().to_string();
        assert!(
            err.contains("'$'") && err.contains("U+0024") && err.contains("position 7"),
            "{err}"
        );
        assert!(t.encode("").unwrap().is_empty());
    }

    #[test]
    fn decode_skips_specials_and_stops_at_eos() {
        let t = Tokenizer::new("ab");
        let ids = [
            Tokenizer::BOS,
            3,
            Tokenizer::PAD,
            4,
            99,
            -1,
            Tokenizer::EOS,
            3,
        ];
        assert_eq!(t.decode(&ids), "ab");
        assert_eq!(t.decode(&[]), "");
    }

    #[test]
    fn repeated_chars_keep_their_first_id() {
        let t = Tokenizer::new("abca");
        assert_eq!(t.vocab_size(), 6);
        assert_eq!(t.encode("a").unwrap(), vec![3]);
        assert_eq!(t.decode(&[5]), "c");
    }

    #[test]
    fn tokenizer_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Tokenizer>();
    }
}
