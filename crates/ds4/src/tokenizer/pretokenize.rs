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

use std::ops::ControlFlow;

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

/// One character of the text being split: its value and class.
#[derive(Clone, Copy)]
struct Ch {
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

/// The classes of the 128 ASCII characters, from the same table (most text is ASCII, and
/// the splitter looks at a character once per stage).
fn ascii_classes() -> &'static [Class; 128] {
    static TABLE: std::sync::OnceLock<[Class; 128]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [Class::Other; 128];
        for (b, slot) in (0u8..128).zip(t.iter_mut()) {
            *slot = class_of(char::from(b));
        }
        t
    })
}

/// Splits `text` into pre-token pieces, in order, calling `emit` for each (never empty). The
/// split stops early, returning `Break`, as soon as `emit` does. Memory is O(1): characters
/// are decoded from `text` as they are looked at, never collected.
pub(crate) fn split(text: &str, emit: &mut impl FnMut(&str) -> ControlFlow<()>) -> ControlFlow<()> {
    let mut pieces = Splitter {
        text,
        ascii: ascii_classes(),
        emit,
    };
    pieces.stage_digits(0, text.len())
}

/// Positions are byte offsets into `text`, always on char boundaries.
struct Splitter<'a, F> {
    text: &'a str,
    ascii: &'static [Class; 128],
    emit: &'a mut F,
}

impl<F: FnMut(&str) -> ControlFlow<()>> Splitter<'_, F> {
    /// The character at byte offset `i`, if any.
    fn ch(&self, i: usize) -> Option<Ch> {
        let c = self.text.get(i..)?.chars().next()?;
        let class = match self
            .ascii
            .get(usize::try_from(u32::from(c)).unwrap_or(usize::MAX))
        {
            Some(&class) => class,
            None => class_of(c),
        };
        Some(Ch { c, class })
    }

    /// The offset after the character at `i` (`i` itself at the end).
    fn next(&self, i: usize) -> usize {
        self.ch(i).map_or(i, |ch| i + ch.c.len_utf8())
    }

    fn is(&self, i: usize, pred: impl Fn(Ch) -> bool) -> bool {
        self.ch(i).is_some_and(pred)
    }

    /// First offset at or after `i` (before `end`) where `pred` fails.
    fn run_end(&self, mut i: usize, end: usize, pred: impl Fn(Ch) -> bool) -> usize {
        while i < end {
            match self.ch(i) {
                Some(ch) if pred(ch) => i += ch.c.len_utf8(),
                _ => break,
            }
        }
        i
    }

    /// Stage 1: `\p{N}{1,3}`, isolated.
    fn stage_digits(&mut self, start: usize, end: usize) -> ControlFlow<()> {
        let is_num = |ch: Ch| ch.class == Class::Number;
        let mut i = start;
        while i < end {
            let j = if self.is(i, is_num) {
                let mut j = i;
                for _ in 0..3 {
                    if j < end && self.is(j, is_num) {
                        j = self.next(j);
                    }
                }
                j
            } else {
                self.run_end(i, end, |ch| !is_num(ch))
            };
            self.stage_cjk(i, j)?;
            i = j;
        }
        ControlFlow::Continue(())
    }

    /// Stage 2: `[一-龥぀-ゟ゠-ヿ]+`, isolated.
    fn stage_cjk(&mut self, start: usize, end: usize) -> ControlFlow<()> {
        let mut i = start;
        while i < end {
            let j = if self.is(i, Ch::is_cjk) {
                self.run_end(i, end, Ch::is_cjk)
            } else {
                self.run_end(i, end, |ch| !ch.is_cjk())
            };
            self.stage_words(i, j)?;
            i = j;
        }
        ControlFlow::Continue(())
    }

    /// Stage 3: the six-way word regex, isolated; text no alternative matches is a gap piece.
    fn stage_words(&mut self, start: usize, end: usize) -> ControlFlow<()> {
        let mut gap = start;
        let mut i = start;
        while i < end {
            match self.match_word(i, end) {
                Some(j) => {
                    if gap < i {
                        self.piece(gap, i)?;
                    }
                    self.piece(i, j)?;
                    i = j;
                    gap = j;
                }
                None => i = self.next(i).max(i + 1),
            }
        }
        if gap < end {
            self.piece(gap, end)?;
        }
        ControlFlow::Continue(())
    }

    fn piece(&mut self, start: usize, end: usize) -> ControlFlow<()> {
        match self.text.get(start..end) {
            Some(s) => (self.emit)(s),
            None => ControlFlow::Continue(()),
        }
    }

    /// The end of the stage-3 match starting at `i` (within a piece ending at `end`).
    fn match_word(&self, i: usize, end: usize) -> Option<usize> {
        let at = |k: usize, pred: &dyn Fn(Ch) -> bool| k < end && self.is(k, pred);
        let i1 = self.next(i);
        // [ASCII punct][A-Za-z]+
        if at(i, &|ch| ch.c.is_ascii_punctuation()) && at(i1, &|ch| ch.c.is_ascii_alphabetic()) {
            return Some(self.run_end(i1, end, |ch| ch.c.is_ascii_alphabetic()));
        }
        // [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
        let optional_lead = |ch: Ch| {
            !ch.is_newline() && !matches!(ch.class, Class::Letter | Class::Punct | Class::Symbol)
        };
        if at(i, &optional_lead) && at(i1, &Ch::is_letter_or_mark) {
            return Some(self.run_end(i1, end, Ch::is_letter_or_mark));
        }
        if at(i, &Ch::is_letter_or_mark) {
            return Some(self.run_end(i, end, Ch::is_letter_or_mark));
        }
        // ␠?[\p{P}\p{S}]+[\r\n]*
        let ps_start = if at(i, &|ch| ch.c == ' ') && at(i1, &Ch::is_punct_or_symbol) {
            Some(i1)
        } else if at(i, &Ch::is_punct_or_symbol) {
            Some(i)
        } else {
            None
        };
        if let Some(p) = ps_start {
            let j = self.run_end(p, end, Ch::is_punct_or_symbol);
            return Some(self.run_end(j, end, Ch::is_newline));
        }
        // One pass over the whitespace run: its end, its last char, its last newline.
        let (mut k, mut run, mut last, mut after_newline) = (i, 0usize, i, None);
        while k < end {
            match self.ch(k) {
                Some(ch) if ch.is_space() => {
                    last = k;
                    k += ch.c.len_utf8();
                    run += 1;
                    if ch.is_newline() {
                        after_newline = Some(k);
                    }
                }
                _ => break,
            }
        }
        let ws_end = k;
        // \s*[\r\n]+ : the whitespace run up to and including its last newline.
        if after_newline.is_some() {
            return after_newline;
        }
        // \s+(?!\S) | \s+
        if run == 0 {
            None
        } else if ws_end == end || run == 1 {
            Some(ws_end)
        } else {
            Some(last)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let _ = split(text, &mut |p| {
            out.push(p.to_string());
            ControlFlow::Continue(())
        });
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
