//! Per-kernel device time (`DS4_CUDA_PROFILE=1`): an event pair around every launch, resolved
//! in batches, summed per kernel name and printed as a table when the backend is dropped.
//! Graph recording is off while profiling, so the table covers every launch of a step.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::driver::{Device, Event};
use crate::CudaError;

#[derive(Default)]
pub(crate) struct Profile {
    pending: Mutex<Vec<(&'static str, Event, Event)>>,
    totals: Mutex<HashMap<&'static str, (u64, f64)>>,
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
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.push((name, a, b));
        if p.len() >= 4096 {
            let batch = std::mem::take(&mut *p);
            drop(p);
            self.resolve(batch)?;
        }
        Ok(())
    }

    fn resolve(&self, batch: Vec<(&'static str, Event, Event)>) -> Result<(), CudaError> {
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

    /// The table: kernel, launches, total ms, mean µs, share.
    pub fn report(&self, _dev: &Device) -> String {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = self.resolve(batch);
        let t = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let total: f64 = t.values().map(|v| v.1).sum();
        let mut rows: Vec<_> = t.iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let mut s = format!(
            "ds4 CUDA profile: {total:.1} ms of kernels\n{:<16} {:>9} {:>11} {:>10} {:>6}\n",
            "kernel", "launches", "total ms", "mean µs", "share"
        );
        for (name, (n, ms)) in rows {
            s.push_str(&format!(
                "{name:<16} {n:>9} {ms:>11.2} {:>10.2} {:>5.1}%\n",
                ms * 1000.0 / *n as f64,
                100.0 * ms / total.max(1e-9)
            ));
        }
        s
    }
}
