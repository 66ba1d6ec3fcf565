//! The "joyai-llm" pre-tokenizer of DeepSeek V4 (spec/serving.md §1.3, model.md §2.8).
//!
//! V4's tokenizer.json splits text in three stages, each an HF `Split` with behaviour
//! `Isolated` (matches and the gaps between them both become pieces), each stage applied to
//! every piece of the one before:
//!
//! 1. `\p{N}{1,3}`
//! 2. `[一-龥぀-ゟ゠-ヿ]+` (U+4E00–U+9FA5, U+3040–U+309F, U+30A0–U+30FF)
//! 3. ``[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+ | [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+ |
//!    ␠?[\p{P}\p{S}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+``
//!
//! The GGUF carries no pre-tokenizer, so these rules are code here, as in ds4. Unlike ds4's
//! ASCII-only scanner, this one follows the regexes exactly (Unicode classes included, from
//! the reference's own regex engine, see `unicode_classes.rs`), because the fixtures from HF
//! tokenizers are the contract. Each regex alternative is resolved by hand with the same
//! leftmost-first, greedy-with-backtracking result the regex engine gives.

use super::unicode_classes::RANGES;

/// The Unicode class of a character as the pre-tokenizer regexes see it. The classes are
/// disjoint; `Space` is `\s` (White_Space), `Other` is everything in none of them
/// (controls, format characters such as ZWJ, private use, unassigned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// `\p{L}`
    Letter,
    /// `\p{M}`
    Mark,
    /// `\p{N}`
    Number,
    /// `\p{P}`
    Punct,
    /// `\p{S}`
    Symbol,
    /// `\s`
    Space,
    /// None of the above.
    Other,
}

/// The class of `c`, by binary search over the generated range table.
pub(crate) fn class_of(c: char) -> Class {
    let cp = u32::from(c);
    match RANGES.binary_search_by(|&(lo, hi, _)| {
        if hi < cp {
            std::cmp::Ordering::Less
        } else if lo > cp {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    }) {
        Ok(i) => RANGES.get(i).map_or(Class::Other, |r| r.2),
        Err(_) => Class::Other,
    }
}

/// One character of the text being split: its byte offset, value and class.
#[derive(Clone, Copy)]
struct Ch {
    off: usize,
    c: char,
    class: Class,
}

impl Ch {
    fn is_letter_or_mark(self) -> bool {
        matches!(self.class, Class::Letter | Class::Mark)
    }
    fn is_punct_or_symbol(self) -> bool {
        matches!(self.class, Class::Punct | Class::Symbol)
    }
    fn is_newline(self) -> bool {
        matches!(self.c, '\r' | '\n')
    }
    fn is_space(self) -> bool {
        self.class == Class::Space
    }
    fn is_cjk(self) -> bool {
        matches!(u32::from(self.c), 0x4E00..=0x9FA5 | 0x3040..=0x309F | 0x30A0..=0x30FF)
    }
}

/// Splits `text` into pre-token pieces, in order, calling `emit` for each (never empty).
pub(crate) fn split(text: &str, emit: &mut impl FnMut(&str)) {
    let chars: Vec<Ch> = text
        .char_indices()
        .map(|(off, c)| Ch {
            off,
            c,
            class: class_of(c),
        })
        .collect();
    let mut pieces = Splitter {
        text,
        chars: &chars,
        emit,
    };
    pieces.stage_digits(0, chars.len());
}

struct Splitter<'a, F> {
    text: &'a str,
    chars: &'a [Ch],
    emit: &'a mut F,
}

impl<F: FnMut(&str)> Splitter<'_, F> {
    /// Byte offset of char index `i` (`text.len()` at the end).
    fn off(&self, i: usize) -> usize {
        self.chars.get(i).map_or(self.text.len(), |ch| ch.off)
    }

    fn is(&self, i: usize, pred: impl Fn(Ch) -> bool) -> bool {
        self.chars.get(i).is_some_and(|&ch| pred(ch))
    }

    /// First index at or after `i` (before `end`) where `pred` fails.
    fn run_end(&self, mut i: usize, end: usize, pred: impl Fn(Ch) -> bool) -> usize {
        while i < end && self.is(i, &pred) {
            i += 1;
        }
        i
    }

    /// Stage 1: `\p{N}{1,3}`, isolated.
    fn stage_digits(&mut self, start: usize, end: usize) {
        let is_num = |ch: Ch| ch.class == Class::Number;
        let mut i = start;
        while i < end {
            let j = if self.is(i, is_num) {
                self.run_end(i, end.min(i + 3), is_num)
            } else {
                self.run_end(i, end, |ch| !is_num(ch))
            };
            self.stage_cjk(i, j);
            i = j;
        }
    }

    /// Stage 2: `[一-龥぀-ゟ゠-ヿ]+`, isolated.
    fn stage_cjk(&mut self, start: usize, end: usize) {
        let mut i = start;
        while i < end {
            let j = if self.is(i, Ch::is_cjk) {
                self.run_end(i, end, Ch::is_cjk)
            } else {
                self.run_end(i, end, |ch| !ch.is_cjk())
            };
            self.stage_words(i, j);
            i = j;
        }
    }

    /// Stage 3: the six-way word regex, isolated; text no alternative matches is a gap piece.
    fn stage_words(&mut self, start: usize, end: usize) {
        let mut gap = start;
        let mut i = start;
        while i < end {
            match self.match_word(i, end) {
                Some(j) => {
                    if gap < i {
                        self.piece(gap, i);
                    }
                    self.piece(i, j);
                    i = j;
                    gap = j;
                }
                None => i += 1,
            }
        }
        if gap < end {
            self.piece(gap, end);
        }
    }

    fn piece(&mut self, start: usize, end: usize) {
        if let Some(s) = self.text.get(self.off(start)..self.off(end)) {
            (self.emit)(s);
        }
    }

    /// The end of the stage-3 match starting at `i` (within a piece ending at `end`).
    fn match_word(&self, i: usize, end: usize) -> Option<usize> {
        let at = |k: usize, pred: &dyn Fn(Ch) -> bool| k < end && self.is(k, pred);
        // [ASCII punct][A-Za-z]+
        if at(i, &|ch| ch.c.is_ascii_punctuation()) && at(i + 1, &|ch| ch.c.is_ascii_alphabetic()) {
            return Some(self.run_end(i + 1, end, |ch| ch.c.is_ascii_alphabetic()));
        }
        // [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
        let optional_lead = |ch: Ch| {
            !ch.is_newline() && !matches!(ch.class, Class::Letter | Class::Punct | Class::Symbol)
        };
        if at(i, &optional_lead) && at(i + 1, &Ch::is_letter_or_mark) {
            return Some(self.run_end(i + 1, end, Ch::is_letter_or_mark));
        }
        if at(i, &Ch::is_letter_or_mark) {
            return Some(self.run_end(i, end, Ch::is_letter_or_mark));
        }
        // ␠?[\p{P}\p{S}]+[\r\n]*
        let ps_start = if at(i, &|ch| ch.c == ' ') && at(i + 1, &Ch::is_punct_or_symbol) {
            Some(i + 1)
        } else if at(i, &Ch::is_punct_or_symbol) {
            Some(i)
        } else {
            None
        };
        if let Some(p) = ps_start {
            let j = self.run_end(p, end, Ch::is_punct_or_symbol);
            return Some(self.run_end(j, end, Ch::is_newline));
        }
        // \s*[\r\n]+ : the whitespace run up to and including its last newline.
        let ws_end = self.run_end(i, end, Ch::is_space);
        if let Some(last_nl) = (i..ws_end).rev().find(|&k| self.is(k, Ch::is_newline)) {
            return Some(last_nl + 1);
        }
        // \s+(?!\S) | \s+
        let run = ws_end - i;
        if run == 0 {
            None
        } else if ws_end == end || run == 1 {
            Some(ws_end)
        } else {
            Some(ws_end - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        split(text, &mut |p| out.push(p.to_string()));
        out
    }

    #[test]
    fn digits_split_in_groups_of_three() {
        assert_eq!(pieces("a12345b"), ["a", "123", "45", "b"]);
        assert_eq!(pieces("١٢٣٤"), ["١٢٣", "٤"]);
    }

    #[test]
    fn whitespace_before_a_word_leaves_one_space_for_it() {
        assert_eq!(pieces("    int x"), ["   ", " int", " x"]);
        assert_eq!(pieces("a  "), ["a", "  "]);
        assert_eq!(pieces("x \n\n y"), ["x", " \n\n", " y"]);
    }

    #[test]
    fn punctuation_takes_letters_and_trailing_newlines() {
        assert_eq!(
            pieces("#include <x>;\n\nok"),
            ["#include", " <", "x", ">;\n\n", "ok"]
        );
        assert_eq!(pieces("a.b()"), ["a", ".b", "()"]);
    }

    #[test]
    fn cjk_and_kana_runs_are_isolated() {
        assert_eq!(pieces("abc中文カナdef"), ["abc", "中文カナ", "def"]);
    }

    #[test]
    fn unmatched_characters_form_gap_pieces() {
        // ZWJ is a format char (class Other) between two symbols.
        assert_eq!(pieces("👨\u{200d}👩"), ["👨", "\u{200d}", "👩"]);
        assert_eq!(class_of('\u{200d}'), Class::Other);
        assert_eq!(class_of('é'), Class::Letter);
        assert_eq!(class_of('\u{3000}'), Class::Space);
    }
}
