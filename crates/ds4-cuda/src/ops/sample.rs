//! Greedy choice on the device (kernels/sample.cu) and the host's side of it. `argmax_next`
//! ends a step by writing its choice into the row buffer as the next one-row batch and into a
//! ring of mapped pinned host memory; the step's launcher records an event after every step
//! whose key asks for it, and `take_sampled` waits for the oldest such event and reads the
//! ring. So the host issues step t + 1 before step t has run, and the graph's start and the
//! host's own work overlap the device's.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use ds4::backend::{BResult, Greedy, Rows, Tensor};

use super::{dp, drows, err};
use crate::driver::{kargs, DevBuf, Event, Pinned};
use crate::{be_err, CudaBackend, CudaError};

/// Blocks of an `argmax_next` launch (at most ARGMAX_THREADS: the last block combines one
/// slice a thread).
const ARGMAX_BLOCKS: usize = 64;
/// Threads of an `argmax_next` block (ARGMAX_THREADS).
const ARGMAX_THREADS: u32 = 256;
/// Slots of the host ring: more than the steps that can be in flight (two).
const RING: usize = 64;

/// The device and host memory of greedy choices, and the steps whose choice is not yet taken.
pub(crate) struct Sampling {
    /// Per-block best values and indices, then the ticket (zeroed once; the last block
    /// resets it).
    parts: DevBuf,
    /// Slot `pos % RING`: the token to feed at `pos` (written by the device).
    ring: Pinned,
    /// Events after the steps whose choices are not taken yet, oldest first.
    pending: Mutex<VecDeque<Event>>,
    /// Events to reuse.
    spare: Mutex<Vec<Event>>,
}

impl Sampling {
    pub(crate) fn new(dev: &crate::driver::Device) -> Result<Self, CudaError> {
        let parts = DevBuf::new(ARGMAX_BLOCKS * 8 + 4)?;
        dev.memset(parts.ptr, 0, parts.len)?;
        let mut ring = Pinned::new(RING * 4)?;
        ring.as_mut_slice().fill(0);
        Ok(Sampling {
            parts,
            ring,
            pending: Mutex::new(VecDeque::new()),
            spare: Mutex::new(Vec::new()),
        })
    }

    fn pending(&self) -> MutexGuard<'_, VecDeque<Event>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spare(&self) -> MutexGuard<'_, Vec<Event>> {
        self.spare.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl CudaBackend {
    pub(crate) fn op_argmax_next(&self, logits: &Tensor, rows: &Rows, g: Greedy) -> BResult<()> {
        let (n, v) = (rows.n(), logits.cols);
        if n == 0 || logits.rows == 0 {
            return Err(err("greedy choice from no logits"));
        }
        let r = drows(rows)?;
        let x = dp(logits)? + ((logits.rows - 1) * v * 4) as u64;
        let skip = g.skip.and_then(|s| i32::try_from(s).ok()).unwrap_or(-1);
        let s = &self.sampling;
        let (pv, pi) = (s.parts.ptr, s.parts.ptr + (ARGMAX_BLOCKS * 4) as u64);
        let ticket = s.parts.ptr + (ARGMAX_BLOCKS * 8) as u64;
        let (n_i, last, ring, ring_len) = (v as i32, (n - 1) as i32, s.ring.addr(), RING as i32);
        self.launch(
            "argmax_next",
            (ARGMAX_BLOCKS as u32, 1, 1),
            ARGMAX_THREADS,
            0,
            &mut kargs![
                &x, &n_i, &skip, &r.tokens, &r.pos, &last, &ring, &ring_len, &pv, &pi, &ticket
            ],
        )
    }

    /// After a step whose key asks for a greedy choice: the point `take_sampled` waits for.
    pub(crate) fn sampled_step_issued(&self) -> BResult<()> {
        let s = &self.sampling;
        let ev = match s.spare().pop() {
            Some(e) => e,
            None => Event::for_sync().map_err(be_err)?,
        };
        ev.record(&self.dev).map_err(be_err)?;
        s.pending().push_back(ev);
        Ok(())
    }

    /// Forgets the choices not taken (a batch of known tokens follows; a failed greedy run
    /// may have left some).
    pub(crate) fn drop_sampled(&self) {
        let s = &self.sampling;
        let old: Vec<Event> = s.pending().drain(..).collect();
        s.spare().extend(old);
    }

    pub(crate) fn op_take_sampled(&self, pos: usize) -> BResult<u32> {
        let s = &self.sampling;
        let ev = s
            .pending()
            .pop_front()
            .ok_or_else(|| err("no greedy choice pending"))?;
        self.mark("sample call", false);
        let done = ev.wait().map_err(be_err);
        s.spare().push(ev);
        done?;
        self.mark_end("sample wait");
        let t = s
            .ring
            .read_i32(pos % RING)
            .ok_or_else(|| err("greedy ring slot"))?;
        u32::try_from(t).map_err(|_| err(format!("greedy choice {t} for position {pos}")))
    }
}
