//! Stop sequences over streamed text (spec/serving.md §3.4): the client's `stop` /
//! `stop_sequences` strings, matched as substrings of the raw generated text (reasoning
//! included). Text goes out as soon as no stop can start in it; a tail that could still grow
//! into a stop is held back. No tokens here: the caller feeds whole UTF-8 text, after its own
//! hold-back of incomplete UTF-8 (§4.9, `utf8_stream_safe_len`).

/// What one [`StopMatcher::push`] lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopStep {
    /// No stop yet. `emit` is safe to send now; it may be empty while a possible partial
    /// match is held back.
    Continue {
        /// Text proven free of any stop.
        emit: String,
    },
    /// A stop string matched: generation ends with finish `stop` and the session is
    /// invalidated. `emit` is the text before the match; the stop string and anything after it
    /// are dropped.
    Stopped {
        /// The last text to send.
        emit: String,
        /// Which stop matched, as an index into [`StopMatcher::stops`].
        stop: usize,
    },
}

/// Finds the first of several stop strings in text that arrives piece by piece, across piece
/// boundaries, holding back only what could still be the start of a stop.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet emitted: a possible start of a stop.
    held: String,
    stopped: Option<usize>,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are dropped (§3.4).
    pub fn new<I, S>(stops: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let stops = stops
            .into_iter()
            .map(Into::into)
            .filter(|s| !s.is_empty())
            .collect();
        StopMatcher {
            stops,
            held: String::new(),
            stopped: None,
        }
    }

    /// The stop strings, empty ones removed; [`StopStep::Stopped`] indexes this.
    pub fn stops(&self) -> &[String] {
        &self.stops
    }

    /// True when there is nothing to match: every piece passes straight through.
    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// Text held back so far (a possible partial stop).
    pub fn held(&self) -> &str {
        &self.held
    }

    /// Feeds the next decoded piece. After a stop every call answers the same `Stopped`, with
    /// nothing more to emit.
    pub fn push(&mut self, piece: &str) -> StopStep {
        if let Some(stop) = self.stopped {
            return StopStep::Stopped {
                emit: String::new(),
                stop,
            };
        }
        self.held.push_str(piece);
        // Everything before `held` was proven stop-free, so the first match starts in `held`.
        let first = self
            .stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.held.find(s.as_str()).map(|at| (at, i)))
            .min();
        if let Some((at, stop)) = first {
            self.stopped = Some(stop);
            self.held.truncate(at);
            return StopStep::Stopped {
                emit: std::mem::take(&mut self.held),
                stop,
            };
        }
        let safe = self.held.len() - self.partial_len();
        StopStep::Continue {
            emit: self.held.drain(..safe).collect(),
        }
    }

    /// Ends the stream without a stop (EOS, length, tool call): returns the held-back text,
    /// which can no longer become a stop. Empty after a stop.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length in bytes of the longest tail of `held` that is a proper prefix of some stop.
    /// Tails start on char boundaries, so what is emitted is always whole UTF-8.
    fn partial_len(&self) -> usize {
        let text = self.held.as_str();
        self.held
            .char_indices()
            .map(|(start, _)| &text[start..])
            .find(|tail| {
                self.stops
                    .iter()
                    .any(|s| s.len() > tail.len() && s.starts_with(tail))
            })
            .map_or(0, str::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cont(emit: &str) -> StopStep {
        StopStep::Continue { emit: emit.into() }
    }

    fn stopped(emit: &str, stop: usize) -> StopStep {
        StopStep::Stopped {
            emit: emit.into(),
            stop,
        }
    }

    #[test]
    fn without_stops_everything_passes_through() {
        let mut m = StopMatcher::new(Vec::<String>::new());
        assert!(m.is_empty());
        assert_eq!(m.push("hello"), cont("hello"));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn empty_stop_strings_are_dropped() {
        let m = StopMatcher::new(["", "x", ""]);
        assert_eq!(m.stops(), ["x"]);
        assert!(StopMatcher::new([""]).is_empty());
    }

    #[test]
    fn stop_inside_one_piece_cuts_before_it() {
        let mut m = StopMatcher::new(["STOP"]);
        assert_eq!(m.push("hello STOP world"), stopped("hello ", 0));
    }

    #[test]
    fn stop_split_across_pieces_is_held_then_cut() {
        let mut m = StopMatcher::new(["</end>"]);
        assert_eq!(m.push("abc</e"), cont("abc"));
        assert_eq!(m.held(), "</e");
        assert_eq!(m.push("n"), cont(""));
        assert_eq!(m.push("d>xyz"), stopped("", 0));
    }

    #[test]
    fn held_text_is_released_once_it_cannot_match() {
        let mut m = StopMatcher::new(["</end>"]);
        assert_eq!(m.push("abc</e"), cont("abc"));
        assert_eq!(m.push("x<"), cont("</ex"));
        assert_eq!(m.held(), "<");
        assert_eq!(m.finish(), "<");
    }

    #[test]
    fn holds_only_the_longest_possible_start() {
        // "xaa": "aa" can still become "aab", "x" cannot.
        let mut m = StopMatcher::new(["aab"]);
        assert_eq!(m.push("xaa"), cont("x"));
        // "aa" + "ab" = "aaab": the stop starts at the second 'a'.
        assert_eq!(m.push("ab"), stopped("a", 0));
    }

    #[test]
    fn earliest_match_wins_among_overlapping_stops() {
        let mut m = StopMatcher::new(["abcd", "bc"]);
        assert_eq!(m.push("ab"), cont(""));
        assert_eq!(m.push("c"), stopped("a", 1));

        let mut m = StopMatcher::new(["b", "ab"]);
        assert_eq!(m.push("xab"), stopped("x", 1));

        // Same start: the first listed.
        let mut m = StopMatcher::new(["ab", "abc"]);
        assert_eq!(m.push("zabc"), stopped("z", 0));
    }

    #[test]
    fn after_a_stop_nothing_more_is_emitted() {
        let mut m = StopMatcher::new(["x"]);
        assert_eq!(m.push("axb"), stopped("a", 0));
        assert_eq!(m.push("more"), stopped("", 0));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn multi_byte_stops_match_across_pieces() {
        let mut m = StopMatcher::new(["é終"]);
        assert_eq!(m.push("caf"), cont("caf"));
        assert_eq!(m.push("é"), cont(""));
        assert_eq!(m.push("終わり"), stopped("", 0));
    }

    #[test]
    fn hold_back_never_splits_a_char() {
        let mut m = StopMatcher::new(["終了"]);
        assert_eq!(m.push("x終"), cont("x"));
        assert_eq!(m.held(), "終");
        // 'ã' shares its lead byte with 'é' but is a different char: nothing held.
        let mut m = StopMatcher::new(["é"]);
        assert_eq!(m.push("ã"), cont("ã"));
    }

    /// Emitted text over a whole stream, plus whether it stopped.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().copied());
        let mut out = String::new();
        for piece in pieces {
            match m.push(piece) {
                StopStep::Continue { emit } => out.push_str(&emit),
                StopStep::Stopped { emit, .. } => {
                    out.push_str(&emit);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    proptest! {
        #[test]
        fn chunking_never_changes_the_result(
            chars in proptest::collection::vec(prop::sample::select(vec!['a', 'b', 'é', '終', ' ']), 0..40),
            cuts in proptest::collection::vec(0usize..40, 0..8),
        ) {
            let text: String = chars.into_iter().collect();
            let stops = ["ab a", "éé", "b終", "aaa"];
            let first = stops.iter().filter_map(|s| text.find(s)).min();
            let want = (text[..first.unwrap_or(text.len())].to_string(), first.is_some());

            let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
            let mut cuts: Vec<usize> = cuts.iter().filter_map(|&c| bounds.get(c).copied()).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut pieces = Vec::new();
            let mut start = 0;
            for c in cuts.into_iter().chain([text.len()]) {
                pieces.push(&text[start..c]);
                start = c;
            }
            prop_assert_eq!(run(&stops, &pieces), want);
        }
    }
}
