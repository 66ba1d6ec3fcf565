//! Token sampling (spec/serving.md §3): ds4's knobs and their defaults (§3.1), ds4's sampler
//! (`sample_top_p_min_p` / `sample_full_vocab`, §3.3) with its xorshift64* stream, and stop
//! sequences over streamed text (§3.4, [`StopMatcher`]). Logits in, one token id out: no model,
//! no tokenizer, no HTTP. The server's per-token overrides (§3.2) come in through
//! [`SamplerParams::for_thinking`] and [`Sampler::set_force_greedy`].

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{SystemTime, UNIX_EPOCH};

mod stop;

pub use stop::{StopMatcher, StopStep};

/// `DS4_DEFAULT_TEMPERATURE` (ds4.h, §3.1).
pub const DEFAULT_TEMPERATURE: f32 = 1.0;
/// `DS4_DEFAULT_TOP_P` (ds4.h, §3.1): 1.0 means the nucleus filter is off.
pub const DEFAULT_TOP_P: f32 = 1.0;
/// `DS4_DEFAULT_MIN_P` (ds4.h, §3.1), the default filter since ds4 commit 613e9b2.
pub const DEFAULT_MIN_P: f32 = 0.05;
/// ds4 clamps `top_k` to this many candidates (§3.3).
pub const MAX_TOP_K: u32 = 1024;

/// Token ids are `u32`; logits past this index are never looked at.
const MAX_LOGITS: usize = u32::MAX as usize;
/// The full-vocab sorted path drops candidates below `min_p` before sorting; the exact
/// `p_i ≥ p_0·min_p` test runs after the sort. The slack keeps every token that float rounding
/// of that exact test could still admit (its relative error is ~1e-7).
const MIN_P_PREFILTER_SLACK: f32 = 0.999;

/// The sampling knobs of one request (§3.1). `Default` is ds4's API default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerParams {
    /// Softmax temperature; `≤ 0` means greedy (argmax).
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1.0 turns the filter off.
    pub top_p: f32,
    /// Keep only the `top_k` highest logits; 0 turns the filter off; clamped to [`MAX_TOP_K`].
    pub top_k: u32,
    /// Drop tokens whose probability is below `min_p` × the top token's, in [0, 1].
    pub min_p: f32,
    /// RNG seed; `None` picks a time-based one (ds4 does this for a missing or 0 seed).
    pub seed: Option<u64>,
}

impl Default for SamplerParams {
    fn default() -> Self {
        SamplerParams {
            temperature: DEFAULT_TEMPERATURE,
            top_p: DEFAULT_TOP_P,
            top_k: 0,
            min_p: DEFAULT_MIN_P,
            seed: None,
        }
    }
}

/// A sampling knob outside the range a request may ask for.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SampleError {
    /// `field` holds `value`, which is not in `allowed`.
    #[error("`{field}` must be {allowed}, got {value}")]
    OutOfRange {
        /// The request field, as the APIs spell it (`temperature`, `top_p`, `min_p`).
        field: &'static str,
        /// The allowed range, in words.
        allowed: &'static str,
        /// The value given.
        value: f32,
    },
}

impl SamplerParams {
    /// Checks the knobs a client sent. The sampler itself never fails: like ds4 it treats a
    /// top_p outside (0, 1] as 1 and a negative min_p as 0 (§3.3); this is for the server to
    /// reject such requests instead of guessing.
    pub fn validate(&self) -> Result<(), SampleError> {
        let out_of_range = |field, allowed, value| SampleError::OutOfRange {
            field,
            allowed,
            value,
        };
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(out_of_range("temperature", "a finite number ≥ 0", t));
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return Err(out_of_range("top_p", "in (0, 1]", p));
        }
        let m = self.min_p;
        if !(0.0..=1.0).contains(&m) {
            return Err(out_of_range("min_p", "in [0, 1]", m));
        }
        Ok(())
    }

    /// Thinking mode (HIGH or MAX) ignores the client's knobs (§3.2 rule 1): T=1, top_k=0,
    /// top_p=1, min_p=0.05. The seed is kept.
    pub fn for_thinking(self) -> Self {
        SamplerParams {
            seed: self.seed,
            ..SamplerParams::default()
        }
    }
}

/// ds4's RNG (§3.3): xorshift64*, 24-bit uniform floats. Integer-only, so the stream is the
/// same on every platform.
#[derive(Debug, Clone)]
struct XorShift64Star {
    state: u64,
}

impl XorShift64Star {
    /// A zero state would stay zero forever; ds4 replaces it with this.
    const ZERO_STATE_REPLACEMENT: u64 = 0x9e37_79b9_7f4a_7c15;
    const MULTIPLIER: u64 = 0x2545_f491_4f6c_dd1d;

    fn next_f32(&mut self) -> f32 {
        let mut x = self.state;
        if x == 0 {
            x = Self::ZERO_STATE_REPLACEMENT;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        let out = x.wrapping_mul(Self::MULTIPLIER);
        // 24 bits fit an f32 mantissa exactly.
        ((out >> 40) & 0xff_ffff) as f32 / 16_777_216.0
    }
}

/// A seed for requests without one, like ds4's `(time<<32) ^ (seq<<1) ^ job_pointer` (§3.3).
fn time_based_seed() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, AtomicOrdering::Relaxed);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() << 32 ^ u64::from(d.subsec_nanos()));
    now ^ (seq << 1)
}

/// A finite logit that survived a filter, with its unnormalized weight `exp((l - l_max)/T)`.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: u32,
    logit: f32,
    weight: f32,
}

/// Highest logit first; equal logits (including ±0) by lowest id, as ds4's stable sort leaves them.
fn by_rank(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit
        .partial_cmp(&a.logit)
        .unwrap_or(Ordering::Equal)
        .then(a.id.cmp(&b.id))
}

fn token_id(index: usize) -> u32 {
    // Callers cut logits to MAX_LOGITS first, so this never falls back.
    u32::try_from(index).unwrap_or(u32::MAX)
}

/// Argmax over the logits, ties to the lowest id, NaN skipped (§3.3 "T ≤ 0"). Returns 0 when
/// there is nothing to choose from (empty or all NaN).
pub fn greedy(logits: &[f32]) -> u32 {
    let logits = &logits[..logits.len().min(MAX_LOGITS)];
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if !l.is_nan() && best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map_or(0, |(i, _)| token_id(i))
}

/// [`greedy`] with `skip` never chosen (ds4-bench excludes EOS): the same choice, computed as
/// the largest value first (a fold the compiler vectorises), then its first position — two
/// passes over 129,280 values are cheaper than one that compares and branches per value, and
/// this runs on a decode step's host path. The backends' device argmax is tested against it.
pub fn greedy_excluding(logits: &[f32], skip: Option<u32>) -> u32 {
    let logits = &logits[..logits.len().min(MAX_LOGITS)];
    let skip = skip.map(|s| s as usize).filter(|&s| s < logits.len());
    let (head, tail) = match skip {
        Some(s) => (&logits[..s], &logits[s + 1..]),
        None => (logits, &logits[..0]),
    };
    let max = |x: &[f32]| x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let m = max(head).max(max(tail));
    logits
        .iter()
        .enumerate()
        .position(|(i, &v)| v == m && Some(i) != skip)
        .map_or(0, token_id)
}

/// Index and value of the highest finite logit, ties to the lowest id.
fn finite_max(logits: &[f32]) -> Option<(u32, f32)> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_finite() && best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map(|(i, l)| (token_id(i), l))
}

/// Walks `sorted` (by rank, unnormalized weights summing to `sum` over the whole softmax) and
/// returns how many to keep and their weight: keep while `p_i ≥ p_0·min_p` (the first always),
/// stop once the kept mass reaches `top_p`, the crossing token included (§3.3).
fn nucleus(sorted: &[Candidate], sum: f32, top_p: f32, min_p: f32) -> (usize, f32) {
    let Some(first) = sorted.first() else {
        return (0, 0.0);
    };
    let min_prob = (first.weight / sum) * min_p;
    let mut kept_sum = 0.0f32;
    let mut kept = 0;
    for (i, c) in sorted.iter().enumerate() {
        if i > 0 && c.weight / sum < min_prob {
            break;
        }
        kept_sum += c.weight;
        kept += 1;
        if kept_sum / sum >= top_p {
            break;
        }
    }
    (kept, kept_sum)
}

/// Samples a token id from logits with ds4's algorithm and RNG stream (§3.3).
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplerParams,
    seed: u64,
    rng: XorShift64Star,
    force_greedy: bool,
    /// Scratch reused across tokens (up to one entry per vocab id).
    candidates: Vec<Candidate>,
}

impl Sampler {
    /// A sampler for `params`, seeded from `params.seed` or, if `None`, from the clock.
    pub fn new(params: SamplerParams) -> Self {
        let seed = params.seed.unwrap_or_else(time_based_seed);
        Sampler {
            params,
            seed,
            rng: XorShift64Star { state: seed },
            force_greedy: false,
            candidates: Vec::new(),
        }
    }

    /// The knobs this sampler was made with.
    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// The seed in use (the time-based one when `params.seed` was `None`), for logs and replays.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Forces argmax while on, whatever the temperature: the server turns this on while the
    /// DSML tracker is in tool-call structure (§3.2 rule 2). Greedy steps draw no random number.
    pub fn set_force_greedy(&mut self, on: bool) {
        self.force_greedy = on;
    }

    /// Whether argmax is being forced.
    pub fn force_greedy(&self) -> bool {
        self.force_greedy
    }

    /// One token id from `logits` (one per vocab id). Never panics: non-finite logits are
    /// skipped, and with no finite logit at all the result is [`greedy`].
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let logits = &logits[..logits.len().min(MAX_LOGITS)];
        let SamplerParams {
            temperature,
            top_p,
            top_k,
            min_p,
            ..
        } = self.params;
        if self.force_greedy || temperature.is_nan() || temperature <= 0.0 {
            return greedy(logits);
        }
        let top_p = if top_p > 0.0 && top_p <= 1.0 {
            top_p
        } else {
            1.0
        };
        let min_p = if min_p > 0.0 { min_p } else { 0.0 };
        if top_k == 0 {
            self.sample_full_vocab(logits, temperature, top_p, min_p)
        } else {
            self.sample_top_k(logits, temperature, top_k, top_p, min_p)
        }
    }

    /// `top_k` off (ds4 `sample_full_vocab`).
    fn sample_full_vocab(&mut self, logits: &[f32], t: f32, top_p: f32, min_p: f32) -> u32 {
        let Some((best, max_logit)) = finite_max(logits) else {
            return greedy(logits);
        };
        let weight = |l: f32| ((l - max_logit) / t).exp();
        if top_p >= 1.0 {
            // w_max = 1, so `w < min_p` is relative to the top token. Draw in vocab order.
            let kept = || {
                logits
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.is_finite())
                    .map(|(i, &l)| (i, weight(l)))
                    .filter(|&(_, w)| w >= min_p)
            };
            let sum: f32 = kept().map(|(_, w)| w).sum();
            if !(sum > 0.0 && sum.is_finite()) {
                return best;
            }
            let mut r = self.rng.next_f32() * sum;
            for (i, w) in kept() {
                r -= w;
                if r <= 0.0 {
                    return token_id(i);
                }
            }
            return best;
        }
        // top_p < 1: the softmax sum runs over every finite logit in vocab order, then the
        // candidates are sorted and cut.
        self.candidates.clear();
        let mut sum = 0.0f32;
        for (i, &logit) in logits.iter().enumerate() {
            if !logit.is_finite() {
                continue;
            }
            let w = weight(logit);
            sum += w;
            if w >= min_p * MIN_P_PREFILTER_SLACK {
                let id = token_id(i);
                self.candidates.push(Candidate {
                    id,
                    logit,
                    weight: w,
                });
            }
        }
        if !(sum > 0.0 && sum.is_finite()) {
            return best;
        }
        self.candidates.sort_unstable_by(by_rank);
        self.draw_sorted(sum, top_p, min_p).unwrap_or(best)
    }

    /// `top_k` on: the softmax is over the top-k logits only, then the same cut (§3.3).
    fn sample_top_k(&mut self, logits: &[f32], t: f32, top_k: u32, top_p: f32, min_p: f32) -> u32 {
        let k = usize::try_from(top_k.min(MAX_TOP_K)).unwrap_or(1);
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &logit)| Candidate {
                    id: token_id(i),
                    logit,
                    weight: 0.0,
                }),
        );
        if self.candidates.len() > k {
            self.candidates.select_nth_unstable_by(k - 1, by_rank);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_rank);
        let Some(top) = self.candidates.first().copied() else {
            return greedy(logits);
        };
        let mut sum = 0.0f32;
        for c in &mut self.candidates {
            c.weight = ((c.logit - top.logit) / t).exp();
            sum += c.weight;
        }
        if !(sum > 0.0 && sum.is_finite()) {
            return top.id;
        }
        self.draw_sorted(sum, top_p, min_p).unwrap_or(top.id)
    }

    /// Cuts the sorted candidates with [`nucleus`] and draws one proportionally to its weight.
    fn draw_sorted(&mut self, sum: f32, top_p: f32, min_p: f32) -> Option<u32> {
        let (kept, kept_sum) = nucleus(&self.candidates, sum, top_p, min_p);
        let kept = self.candidates.get(..kept)?;
        let mut r = self.rng.next_f32() * kept_sum;
        for c in kept {
            r -= c.weight;
            if r <= 0.0 {
                return Some(c.id);
            }
        }
        kept.last().map(|c| c.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_excluding_takes_the_first_largest_and_skips() {
        let l = [0.5, 3.0, -1.0, 3.0, 2.0];
        assert_eq!(greedy_excluding(&l, None), 1);
        assert_eq!(greedy_excluding(&l, Some(1)), 3);
        assert_eq!(greedy_excluding(&[1.0, 9.0, 2.0], Some(1)), 2);
        assert_eq!(greedy_excluding(&[f32::NEG_INFINITY; 3], None), 0);
        assert_eq!(greedy_excluding(&[f32::NAN, 1.0, f32::NAN], None), 1);
        assert_eq!(greedy_excluding(&[f32::NAN; 3], None), 0);
        // The same choice as `greedy` when nothing is skipped.
        let mut r = 7u64;
        for _ in 0..50 {
            let v: Vec<f32> = (0..300)
                .map(|_| {
                    r = r
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((r >> 40) % 17) as f32
                })
                .collect();
            assert_eq!(greedy_excluding(&v, None), greedy(&v));
        }
    }

    /// Draws many tokens and counts them per id.
    fn histogram(params: SamplerParams, logits: &[f32], draws: usize) -> Vec<usize> {
        let mut sampler = Sampler::new(params);
        let mut counts = vec![0; logits.len()];
        for _ in 0..draws {
            let id = sampler.sample(logits) as usize;
            counts[id] += 1;
        }
        counts
    }

    fn logits_of(probs: &[f32]) -> Vec<f32> {
        probs.iter().map(|p| p.ln()).collect()
    }

    fn params(top_k: u32, top_p: f32, min_p: f32) -> SamplerParams {
        SamplerParams {
            temperature: 1.0,
            top_p,
            top_k,
            min_p,
            seed: Some(7),
        }
    }

    /// Ids that were drawn at least once.
    fn support(counts: &[usize]) -> Vec<usize> {
        (0..counts.len()).filter(|&i| counts[i] > 0).collect()
    }

    #[test]
    fn defaults_are_ds4_api_defaults() {
        let p = SamplerParams::default();
        assert_eq!(
            p,
            SamplerParams {
                temperature: 1.0,
                top_p: 1.0,
                top_k: 0,
                min_p: 0.05,
                seed: None
            }
        );
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn validate_names_the_field_and_range() {
        let bad = [
            (
                SamplerParams {
                    temperature: -0.5,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplerParams {
                    temperature: f32::NAN,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplerParams {
                    temperature: f32::INFINITY,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplerParams {
                    top_p: 0.0,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplerParams {
                    top_p: 1.5,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplerParams {
                    min_p: -0.1,
                    ..Default::default()
                },
                "min_p",
            ),
            (
                SamplerParams {
                    min_p: 1.1,
                    ..Default::default()
                },
                "min_p",
            ),
        ];
        for (p, want) in bad {
            let err = p.validate().expect_err("out of range");
            let SampleError::OutOfRange { field, .. } = &err;
            assert_eq!(*field, want, "{err}");
            assert!(
                err.to_string().starts_with(&format!("`{want}` must be")),
                "{err}"
            );
        }
        let edges = SamplerParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 5000,
            min_p: 1.0,
            seed: Some(0),
        };
        assert_eq!(edges.validate(), Ok(()));
    }

    #[test]
    fn thinking_mode_resets_knobs_but_keeps_seed() {
        let client = SamplerParams {
            temperature: 0.2,
            top_p: 0.5,
            top_k: 3,
            min_p: 0.0,
            seed: Some(9),
        };
        let want = SamplerParams {
            seed: Some(9),
            ..Default::default()
        };
        assert_eq!(client.for_thinking(), want);
    }

    #[test]
    fn rng_follows_xorshift64_star_formula() {
        // Expected numerators (of 2^24) computed in Python straight from the §3.3 formula.
        let cases: [(u64, [u32; 4]); 3] = [
            (0, [885_683, 5_555_276, 11_027_955, 8_220_171]),
            (1, [4_711_630, 11_259_814, 12_177_677, 5_092_376]),
            (42, [5_688_906, 13_124_075, 13_256_299, 15_838_407]),
        ];
        for (seed, want) in cases {
            let mut rng = XorShift64Star { state: seed };
            for w in want {
                assert_eq!(rng.next_f32(), w as f32 / 16_777_216.0, "seed {seed}");
            }
        }
    }

    #[test]
    fn first_draw_lands_where_the_formula_says() {
        // Seed 1's first uniform is 4711630/2^24 ≈ 0.281; over p = [0.1, 0.2, 0.3, 0.4] in
        // vocab order the cumulative mass first reaches it at id 1.
        let logits = logits_of(&[0.1, 0.2, 0.3, 0.4]);
        let mut s = Sampler::new(SamplerParams {
            min_p: 0.0,
            seed: Some(1),
            ..Default::default()
        });
        assert_eq!(s.sample(&logits), 1);
    }

    #[test]
    fn fixed_seed_reproduces_token_sequence() {
        let logits: Vec<f32> = (0..500).map(|i| ((i * 37 % 101) as f32) * 0.05).collect();
        for p in [
            params(0, 1.0, 0.05),
            params(0, 0.9, 0.05),
            params(40, 0.95, 0.0),
        ] {
            let run = |seed| {
                let mut s = Sampler::new(SamplerParams {
                    seed: Some(seed),
                    ..p
                });
                (0..200).map(|_| s.sample(&logits)).collect::<Vec<_>>()
            };
            assert_eq!(run(1234), run(1234));
            assert_ne!(run(1234), run(1235));
        }
    }

    #[test]
    fn missing_seed_picks_one_and_reports_it() {
        let mut a = Sampler::new(SamplerParams::default());
        assert_eq!(a.rng.state, a.seed());
        assert!(a.sample(&[0.0, 0.0]) < 2);
        assert_eq!(
            Sampler::new(SamplerParams {
                seed: Some(5),
                ..Default::default()
            })
            .seed(),
            5
        );
    }

    #[test]
    fn greedy_is_argmax_with_ties_to_lowest_id() {
        assert_eq!(greedy(&[0.5, 2.0, -1.0, 2.0]), 1);
        assert_eq!(greedy(&[3.0, 3.0]), 0);
        assert_eq!(greedy(&[f32::NAN, 1.0, f32::NAN, 4.0]), 3);
        assert_eq!(greedy(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        assert_eq!(greedy(&[f32::NAN, f32::NAN]), 0);
        assert_eq!(greedy(&[]), 0);
    }

    #[test]
    fn zero_or_negative_temperature_is_greedy_and_draws_nothing() {
        let logits = [0.1, 0.9, 0.9, 0.3];
        for t in [0.0, -1.0, f32::NAN] {
            let mut s = Sampler::new(SamplerParams {
                temperature: t,
                seed: Some(3),
                ..Default::default()
            });
            for _ in 0..50 {
                assert_eq!(s.sample(&logits), 1, "T={t}");
            }
            assert_eq!(s.rng.state, 3, "T={t} must not advance the RNG");
        }
    }

    #[test]
    fn tiny_temperature_approaches_greedy() {
        let logits = [1.0, 1.5, 1.2, -3.0];
        let counts = histogram(
            SamplerParams {
                temperature: 1e-3,
                seed: Some(1),
                ..Default::default()
            },
            &logits,
            500,
        );
        assert_eq!(counts, vec![0, 500, 0, 0]);
    }

    #[test]
    fn force_greedy_overrides_temperature_until_turned_off() {
        let logits = [1.0, 1.1, 1.0, 1.0];
        let mut s = Sampler::new(SamplerParams {
            min_p: 0.0,
            seed: Some(11),
            ..Default::default()
        });
        s.set_force_greedy(true);
        assert!(s.force_greedy());
        assert!((0..100).all(|_| s.sample(&logits) == 1));
        s.set_force_greedy(false);
        let drawn: Vec<u32> = (0..100).map(|_| s.sample(&logits)).collect();
        assert!(drawn.iter().any(|&id| id != 1));
    }

    #[test]
    fn top_k_two_never_samples_the_third() {
        let logits = [2.0, 1.9, 1.8, -5.0, 1.85];
        let counts = histogram(params(2, 1.0, 0.0), &logits, 2000);
        assert_eq!(support(&counts), vec![0, 1]);
    }

    #[test]
    fn top_k_is_clamped_to_1024_keeping_lowest_ids_on_ties() {
        let logits = vec![0.0f32; 2000];
        let counts = histogram(params(5000, 1.0, 0.0), &logits, 4000);
        assert!(counts[1024..].iter().all(|&c| c == 0));
        assert!(counts[1000..1024].iter().any(|&c| c > 0));
    }

    #[test]
    fn top_p_keeps_the_token_that_crosses_the_mass() {
        // p = [0.5, 0.3, 0.15, 0.05], shuffled so the sort matters: cumulative 0.5, 0.8, 0.95.
        let logits = logits_of(&[0.15, 0.5, 0.05, 0.3]);
        let cases: [(f32, &[usize]); 4] = [
            (0.4, &[1]),
            (0.75, &[1, 3]),
            (0.85, &[0, 1, 3]),
            (0.99, &[0, 1, 2, 3]),
        ];
        for (top_p, want) in cases {
            for top_k in [0, 4] {
                let counts = histogram(params(top_k, top_p, 0.0), &logits, 3000);
                assert_eq!(support(&counts), want, "top_p {top_p} top_k {top_k}");
            }
        }
    }

    #[test]
    fn min_p_is_relative_to_the_top_token() {
        // Top p is 0.5: min_p 0.25 cuts below 0.125, min_p 0.5 below 0.25.
        let logits = logits_of(&[0.15, 0.5, 0.05, 0.3]);
        for (min_p, want) in [
            (0.25, &[0, 1, 3][..]),
            (0.5, &[1, 3][..]),
            (0.0, &[0, 1, 2, 3][..]),
        ] {
            // Full-vocab path, sorted path, top-k path.
            for (top_k, top_p) in [(0, 1.0), (0, 0.999), (4, 1.0)] {
                let counts = histogram(params(top_k, top_p, min_p), &logits, 3000);
                assert_eq!(
                    support(&counts),
                    want,
                    "min_p {min_p} top_k {top_k} top_p {top_p}"
                );
            }
        }
    }

    #[test]
    fn frequencies_match_the_softmax() {
        // Chi-square with 3 degrees of freedom; 16.27 is the p = 0.001 critical value. The seed
        // is fixed, so this either always passes or always fails.
        const CHI2_CRITICAL_3DOF_P001: f64 = 16.27;
        const DRAWS: usize = 40_000;
        let probs = [0.1f32, 0.2, 0.3, 0.4];
        let logits = logits_of(&probs);
        for (top_k, top_p) in [(0, 1.0), (0, 0.9999), (4, 1.0)] {
            let counts = histogram(params(top_k, top_p, 0.0), &logits, DRAWS);
            let chi2: f64 = counts
                .iter()
                .zip(probs)
                .map(|(&c, p)| {
                    let want = f64::from(p) * DRAWS as f64;
                    (c as f64 - want).powi(2) / want
                })
                .sum();
            assert!(
                chi2 < CHI2_CRITICAL_3DOF_P001,
                "top_k {top_k} top_p {top_p}: chi2 {chi2} counts {counts:?}"
            );
        }
    }

    #[test]
    fn temperature_flattens_and_sharpens() {
        let logits = logits_of(&[0.2, 0.8]);
        let low = histogram(
            SamplerParams {
                temperature: 0.5,
                ..params(0, 1.0, 0.0)
            },
            &logits,
            10_000,
        );
        let high = histogram(
            SamplerParams {
                temperature: 2.0,
                ..params(0, 1.0, 0.0)
            },
            &logits,
            10_000,
        );
        // T=0.5 squares the odds (1:16 → p0 ≈ 0.059); T=2 takes their root (1:2 → p0 ≈ 0.333).
        assert!((500..700).contains(&low[0]), "{low:?}");
        assert!((3150..3520).contains(&high[0]), "{high:?}");
    }

    #[test]
    fn non_finite_logits_are_skipped_without_panic() {
        let logits = [
            f32::NAN,
            f32::NEG_INFINITY,
            1.0,
            f32::INFINITY,
            0.5,
            f32::NAN,
        ];
        for (top_k, top_p) in [(0, 1.0), (0, 0.95), (3, 1.0), (3, 0.5)] {
            let counts = histogram(params(top_k, top_p, 0.0), &logits, 500);
            assert!(
                support(&counts).iter().all(|&i| i == 2 || i == 4),
                "{counts:?}"
            );
        }
        for top_k in [0, 3] {
            for top_p in [1.0, 0.5] {
                let mut s = Sampler::new(params(top_k, top_p, 0.05));
                assert_eq!(s.sample(&[f32::NAN, f32::NAN]), 0);
                assert_eq!(s.sample(&[f32::NEG_INFINITY, f32::INFINITY]), 1);
                assert_eq!(s.sample(&[]), 0);
            }
        }
    }

    #[test]
    fn out_of_range_knobs_are_treated_like_ds4() {
        // top_p outside (0, 1] means 1 and a negative min_p means 0 (§3.3): every token stays.
        let logits = logits_of(&[0.01, 0.5, 0.49]);
        for top_p in [0.0, -1.0, 2.0, f32::NAN] {
            let counts = histogram(params(0, top_p, -0.5), &logits, 3000);
            assert_eq!(support(&counts), vec![0, 1, 2], "top_p {top_p}");
        }
    }
}
