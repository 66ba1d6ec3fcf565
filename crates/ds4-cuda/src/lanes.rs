//! Branches of independent operations ([`ds4::backend::Lane`]) on the device's side stream.
//!
//! A decode step is some 1,400 small launches in a chain; many of them are independent (a
//! layer's KV row and its compressors beside its queries, the shared expert beside the routing
//! and the routed experts), and a chain of small kernels leaves most of the device idle during
//! each one's ramp and tail. A branch runs on a side stream after an event recorded on the main
//! one and is joined by another event; inside a stream capture these become the graph's fork
//! and join edges, so a replayed step runs the lines at once. Branches opened one after the
//! other before the main line resumes run beside each other, one side stream each
//! ([`crate::driver::SIDE_STREAMS`]; any further ones share the last).
//!
//! Only one-row batches use branches (decode: graph-recorded, no cuBLAS, whose handle is bound
//! to the main stream), and not while profiling (the event table times launches one by one).
//! `DS4_CUDA_LANES=0` turns them off. Two resources are shared between the lines:
//! - the scratch arena: a branch's temporaries stay allocated until the join
//!   ([`crate::arena::Arena::hold_peak`]), so the main line never reuses memory that the branch's
//!   kernels may still be using;
//! - the norm planes ([`crate::NormPlanes`]): inside a branch only the main line writes planes,
//!   into the buffer that was not held when the branch began (which the branch may be reading);
//!   when the main line resumes, the planes held at the fork are held again (the branch writes
//!   nothing the main line reads).

use std::sync::Mutex;

use ds4::backend::{BResult, Lane};

use crate::driver::SIDE_STREAMS;
use crate::{be_err, CudaBackend, HeldPlanes};

/// An open branch.
#[derive(Debug, Clone, Copy)]
struct Fork {
    /// The arena fill when it began, released again at the join.
    mark: usize,
    /// The arena fill held for the branch when the main line resumed.
    held_fill: Option<usize>,
    /// The planes held when it began.
    planes: Option<HeldPlanes>,
    /// Whether operations go to a branch now (not yet back to the main line).
    on_side: bool,
    /// Branches opened (each on its own side stream, the last one taking any beyond).
    branches: usize,
    /// Whether the branch wrote the row of `planes`.
    forgot: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Whether the current batch may use branches.
    allowed: bool,
    fork: Option<Fork>,
}

/// The lane state of a backend.
#[derive(Debug)]
pub(crate) struct Lanes {
    /// Whether branches are used at all (`DS4_CUDA_LANES`).
    on: bool,
    state: Mutex<State>,
}

impl Lanes {
    pub fn new(on: bool) -> Self {
        Lanes {
            on,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The buffer a norm writes its planes to when `held` are held now, or None inside a
    /// branch's own operations.
    pub fn planes_buffer(&self, held: Option<HeldPlanes>) -> Option<usize> {
        let other = |h: Option<HeldPlanes>| h.map_or(0, |h| 1 - h.buf);
        match self.state().fork {
            Some(f) if f.on_side => None,
            Some(f) => Some(other(f.planes)),
            None => Some(other(held)),
        }
    }

    /// Notes that a launcher is about to write `row` (see [`crate::CudaBackend::forget_planes`]).
    pub fn forgetting(&self, row: u64) {
        if let Some(f) = self.state().fork.as_mut() {
            if f.on_side && f.planes.is_some_and(|h| h.row == row) {
                f.forgot = true;
            }
        }
    }
}

impl CudaBackend {
    /// A new batch of `rows` rows: branches only for one row.
    pub(crate) fn lanes_for_batch(&self, rows: usize) {
        self.lanes_reset();
        self.lanes.state().allowed = self.lanes.on && rows == 1 && !self.profiling();
    }

    /// Closes any branch a failed step left open: the main stream waits for the side streams
    /// (so that what it runs next cannot overwrite memory their kernels still use), and the
    /// lanes start from the main line again.
    pub(crate) fn lanes_reset(&self) {
        let mut st = self.lanes.state();
        if let Some(f) = st.fork.take() {
            // Best effort: after a failed capture the streams may refuse; the step that follows
            // reports any real device error itself.
            if self.dev.join(f.branches).is_err() {
                self.dev.to_main();
            }
        }
    }

    pub(crate) fn op_lane(&self, lane: Lane) -> BResult<()> {
        let mut st = self.lanes.state();
        if !st.allowed {
            return Ok(());
        }
        let misuse = |what: &str| Err(crate::ops::err(format!("lanes: {what}")));
        match (lane, st.fork) {
            (Lane::Branch, None) => {
                self.dev.fork(0).map_err(be_err)?;
                let mark = self.arena.mark();
                self.arena.start_peak();
                st.fork = Some(Fork {
                    mark,
                    held_fill: None,
                    planes: *self.norm_planes.held(),
                    on_side: true,
                    forgot: false,
                    branches: 1,
                });
                Ok(())
            }
            (Lane::Branch, Some(mut f)) if f.on_side => {
                // Another branch beside the first: it keeps what the first took, and sees the
                // planes held at the fork.
                self.arena.hold_peak();
                if f.branches < SIDE_STREAMS {
                    self.dev.fork(f.branches).map_err(be_err)?;
                    f.branches += 1;
                }
                *self.norm_planes.held() = if f.forgot { None } else { f.planes };
                st.fork = Some(f);
                Ok(())
            }
            (Lane::Main, Some(mut f)) if f.on_side => {
                self.dev.to_main();
                f.on_side = false;
                f.held_fill = Some(self.arena.hold_peak());
                *self.norm_planes.held() = if f.forgot { None } else { f.planes };
                st.fork = Some(f);
                Ok(())
            }
            (Lane::Join, Some(f)) if !f.on_side => {
                self.dev.join(f.branches).map_err(be_err)?;
                // The main line's own temporaries are released by now; if it kept something
                // (a tensor allocated beside the branch), keep the branch's memory as well.
                if f.held_fill == Some(self.arena.mark()) {
                    self.arena.release(f.mark);
                }
                st.fork = None;
                Ok(())
            }
            (Lane::Branch, Some(_)) => misuse("a branch opened from the main line beside one"),
            (Lane::Main, _) => misuse("the main line resumed outside a branch"),
            (Lane::Join, _) => misuse("a join without a branch and its main line"),
        }
    }
}
