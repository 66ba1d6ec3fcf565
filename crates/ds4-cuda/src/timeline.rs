//! The decode timeline (`DS4_CUDA_TIMELINE=1`): block 0 of every kernel stamps the device's
//! global timer and the kernel's name into a buffer as it starts (common.cuh
//! `timeline_stamp`), with graphs, dependent launch and branches as they run by default —
//! unlike the event profile (profile.rs), which serialises every launch. When the backend is
//! dropped it prints where a replayed decode step's time goes: for each kernel, the time from
//! its start to the next kernel's start (its run plus the hand-off to the next), summed per
//! name; with branches that is the time each kernel was the latest to have started. The
//! buffer's address is compiled into the kernels (a define), so this mode compiles its own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::driver::{DevBuf, Device};
use crate::CudaError;

/// Entries the buffer holds (32 bytes each); later kernels are counted, not stamped.
const CAP: usize = 1 << 20;
/// Decode steps skipped at the start (warm-up, first replays).
const SKIP: usize = 2;

pub(crate) struct Timeline {
    buf: DevBuf,
    host: Mutex<Host>,
}

/// The host's side of decode steps: the time between consecutive [`Timeline::mark`]s, summed
/// per mark over the cycles (one read to the next) that replayed a one-row graph.
#[derive(Default)]
struct Host {
    sums: Vec<(&'static str, u64, f64)>,
    pending: Vec<(&'static str, f64)>,
    last: Option<Instant>,
    /// Whether the cycle being timed replayed a graph.
    replayed: bool,
}

struct Stamp {
    ns: u64,
    name: String,
}

impl Timeline {
    /// The timeline when `DS4_CUDA_TIMELINE` is set (not "0"), its buffer zeroed.
    pub fn from_env(dev: &Device) -> Result<Option<Self>, CudaError> {
        if !std::env::var("DS4_CUDA_TIMELINE").is_ok_and(|v| v != "0") {
            return Ok(None);
        }
        let buf = DevBuf::new(16 + CAP * 32)?;
        dev.memset(buf.ptr, 0, 16)?;
        dev.sync()?;
        Ok(Some(Timeline {
            buf,
            host: Mutex::new(Host::default()),
        }))
    }

    fn host(&self) -> std::sync::MutexGuard<'_, Host> {
        self.host.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the host phase `name` (the time since the previous mark); `end_of_cycle` closes a
    /// step's cycle (its output read), `replayed` says that this cycle replayed a graph.
    pub fn mark(&self, name: &'static str, replayed: bool, end_of_cycle: bool) {
        let now = Instant::now();
        let mut h = self.host();
        if let Some(l) = h.last {
            let us = now.duration_since(l).as_secs_f64() * 1e6;
            h.pending.push((name, us));
        }
        h.last = Some(now);
        h.replayed |= replayed;
        if end_of_cycle {
            let pending = std::mem::take(&mut h.pending);
            if std::mem::take(&mut h.replayed) {
                for (name, us) in pending {
                    match h.sums.iter_mut().find(|e| e.0 == name) {
                        Some(e) => {
                            e.1 += 1;
                            e.2 += us;
                        }
                        None => h.sums.push((name, 1, us)),
                    }
                }
            }
        }
    }

    /// The defines that turn the stamps on, put before the kernel source.
    pub fn define(&self) -> String {
        format!(
            "#define DS4_TIMELINE 0x{:x}ull\n#define DS4_TIMELINE_CAP {CAP}ull\n",
            self.buf.ptr
        )
    }

    fn stamps(&self, dev: &Device) -> Result<(Vec<Stamp>, u64), CudaError> {
        let mut head = [0u8; 8];
        dev.dtoh(&mut head, self.buf.ptr)?;
        let count = u64::from_le_bytes(head);
        let n = (count as usize).min(CAP);
        let mut raw = vec![0u8; n * 32];
        dev.dtoh(&mut raw, self.buf.ptr + 16)?;
        let mut v: Vec<Stamp> = raw
            .chunks_exact(32)
            .map(|e| {
                let word =
                    |i: usize| u64::from_le_bytes(e[8 * i..8 * i + 8].try_into().expect("8 bytes"));
                let bytes: Vec<u8> = (1..4).flat_map(|i| word(i).to_le_bytes()).collect();
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                Stamp {
                    ns: word(0),
                    name: String::from_utf8_lossy(&bytes[..end]).into_owned(),
                }
            })
            .collect();
        v.sort_by_key(|s| s.ns);
        Ok((v, count))
    }

    /// The report: decode steps (from one `embed` to the next, with no prefill kernel), the
    /// mean span, gap and kernels of a step, the per-kernel table, and one step in order.
    pub fn report(&self, dev: &Device) -> Result<String, CudaError> {
        let (v, count) = self.stamps(dev)?;
        let mut starts: Vec<usize> = (0..v.len()).filter(|&i| v[i].name == "embed").collect();
        starts.push(v.len());
        let prefill = |s: &[Stamp]| {
            s.iter()
                .any(|k| k.name.starts_with("mq_") || k.name == "deq_f16" || k.name == "to_f16")
        };
        let steps: Vec<(usize, usize)> = starts
            .windows(2)
            .map(|w| (w[0], w[1]))
            .filter(|&(a, b)| b - a > 8 && !prefill(&v[a..b]))
            .skip(SKIP)
            .collect();
        let mut s = format!(
            "ds4 CUDA timeline: {count} kernels stamped, {} decode steps measured\n",
            steps.len()
        );
        {
            let h = self.host();
            s.push_str("host, per replayed step (µs from the previous mark to):");
            for (name, n, us) in &h.sums {
                s.push_str(&format!(" {name} {:.1},", us / (*n).max(1) as f64));
            }
            s.push('\n');
        }
        if steps.is_empty() {
            return Ok(s);
        }
        let (mut span, mut gap, mut gaps, mut kernels) = (0.0f64, 0.0f64, 0usize, 0usize);
        let mut per: HashMap<&str, (usize, f64)> = HashMap::new();
        for &(a, b) in &steps {
            span += (v[b - 1].ns - v[a].ns) as f64 / 1e3;
            if b < v.len() {
                gap += (v[b].ns - v[b - 1].ns) as f64 / 1e3;
                gaps += 1;
            }
            kernels += b - a;
            for i in a..b - 1 {
                let e = per.entry(&v[i].name).or_insert((0, 0.0));
                e.0 += 1;
                e.1 += (v[i + 1].ns - v[i].ns) as f64 / 1e3;
            }
        }
        let n = steps.len() as f64;
        s.push_str(&format!(
            "per step: {:.1} µs from the first kernel's start to the last's, {:.1} µs from the last's start to the next step, {:.0} kernels\n{:<16} {:>9} {:>10} {:>10} {:>6}\n",
            span / n,
            gap / gaps.max(1) as f64,
            kernels as f64 / n,
            "kernel",
            "launches",
            "µs/step",
            "µs/launch",
            "share"
        ));
        let mut rows: Vec<_> = per.into_iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        for (name, (c, us)) in rows {
            s.push_str(&format!(
                "{name:<16} {:>9.1} {:>10.1} {:>10.2} {:>5.1}%\n",
                c as f64 / n,
                us / n,
                us / c as f64,
                100.0 * us / span.max(1e-9)
            ));
        }
        let (a, b) = steps[steps.len() / 2];
        s.push_str("one step in order (µs from its start, µs to the next kernel's start):\n");
        for i in a..b {
            let next = v.get(i + 1).map_or(0.0, |k| (k.ns - v[i].ns) as f64 / 1e3);
            s.push_str(&format!(
                "{:>4} {:>9.2} {:>7.2} {}\n",
                i - a,
                (v[i].ns - v[a].ns) as f64 / 1e3,
                next,
                v[i].name
            ));
        }
        Ok(s)
    }
}
