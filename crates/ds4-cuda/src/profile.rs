//! Per-kernel device time (`DS4_CUDA_PROFILE=1`): an event pair around every launch, resolved
//! in batches, summed per kernel name and printed as a table when the backend is dropped.
//! Graph recording is off while profiling, so the table covers every launch of a step.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::driver::{Device, Event};
use crate::CudaError;

/// A launch waiting to be resolved: (kernel, decode step), start, end.
type Pending = ((&'static str, bool), Event, Event);

#[derive(Default)]
pub(crate) struct Profile {
    pending: Mutex<Vec<Pending>>,
    /// (launches, ms) per (kernel, decode step).
    #[allow(clippy::type_complexity)]
    totals: Mutex<HashMap<(&'static str, bool), (u64, f64)>>,
    /// Whether the batch being run is one row (a decode step).
    pub decode: std::sync::atomic::AtomicBool,
    /// Decode steps and chunks of several rows seen.
    pub steps: [std::sync::atomic::AtomicU64; 2],
}

impl Profile {
    /// Runs `launch` between two recorded events.
    pub fn time(
        &self,
        dev: &Device,
        name: &'static str,
        launch: impl FnOnce() -> Result<(), CudaError>,
    ) -> Result<(), CudaError> {
        let (a, b) = (Event::new()?, Event::new()?);
        a.record(dev)?;
        launch()?;
        b.record(dev)?;
        let decode = self.decode.load(std::sync::atomic::Ordering::Relaxed);
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.push(((name, decode), a, b));
        if p.len() >= 4096 {
            let batch = std::mem::take(&mut *p);
            drop(p);
            self.resolve(batch)?;
        }
        Ok(())
    }

    fn resolve(&self, batch: Vec<Pending>) -> Result<(), CudaError> {
        let mut t = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        for (name, a, b) in batch {
            b.wait()?;
            let ms = a.elapsed_ms(&b)?;
            let e = t.entry(name).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += f64::from(ms);
        }
        Ok(())
    }

    /// Two tables (decode steps, multi-row chunks): kernel, launches per step, µs per step,
    /// mean µs per launch, share.
    pub fn report(&self, _dev: &Device) -> String {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = self.resolve(batch);
        let t = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = String::new();
        for (decode, what) in [(true, "decode step"), (false, "prefill chunk")] {
            let steps = self.steps[if decode { 0 } else { 1 }]
                .load(std::sync::atomic::Ordering::Relaxed)
                .max(1) as f64;
            let mut rows: Vec<_> = t.iter().filter(|(k, _)| k.1 == decode).collect();
            let total: f64 = rows.iter().map(|(_, v)| v.1).sum();
            rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
            s.push_str(&format!(
                "ds4 CUDA profile, per {what} ({steps} of them): {:.3} ms of kernels\n{:<16} {:>10} {:>12} {:>10} {:>6}\n",
                total / steps,
                "kernel",
                "launches",
                "µs/step",
                "µs/launch",
                "share"
            ));
            for ((name, _), (n, ms)) in rows {
                s.push_str(&format!(
                    "{name:<16} {:>10.1} {:>12.1} {:>10.2} {:>5.1}%\n",
                    *n as f64 / steps,
                    ms * 1000.0 / steps,
                    ms * 1000.0 / *n as f64,
                    100.0 * ms / total.max(1e-9)
                ));
            }
        }
        s
    }
}
