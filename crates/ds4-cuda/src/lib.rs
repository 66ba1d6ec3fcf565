//! The CUDA backend (DESIGN.md): the whole forward pass on the device. Weights are uploaded
//! once at start (repacked where their blocks are unaligned), activations and scratch live in
//! a device arena that each forward pass reuses from the start, sessions live in device
//! memory, and only the logits come back. Kernels live in `kernels/*.cu`, embedded in the
//! binary and compiled by NVRTC for the running GPU (cached on disk); the driver, NVRTC and
//! cuBLAS are loaded at run time through cudarc, so the crate builds and links anywhere and a
//! machine without a GPU gets a clear error, not a panic.
//!
//! Numerics: with `Numerics::fast` (the default precision) one-row matmuls quantise the
//! activation to 8 bits per 32 values and use integer dot products, and prefill chunks dequantise
//! weights to f16 for cuBLAS GEMMs; without it (precise) every product is f32 over weights
//! dequantised exactly as on the CPU. A decode step in the default precision is captured once
//! as a CUDA graph per [`StepKey`] and session and replayed for later tokens.
//!
//! Files: `driver` (driver API), `nvrtc` (kernel source and compile), `upload` (weights),
//! `state` (device sessions), `arena` (scratch), `gemm` (cuBLAS), `ops/` (the launchers of each
//! backend operation, grouped by spec concept).
#![allow(unsafe_code)] // FFI: driver calls and kernel launches (each site has a SAFETY comment).
#![warn(missing_docs)]

mod arena;
mod driver;
mod gemm;
mod lanes;
pub mod nvrtc;
mod ops;
mod profile;
mod state;
mod timeline;
mod upload;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ds4::backend::{Backend, BackendError, CpuBackend};
use ds4::model::config::Config;
use ds4::model::weights::TensorRef;
use ds4::model::{Model, PREFILL_CHUNK};

use crate::arena::Arena;
use crate::driver::{DevBuf, Device, GraphExec, Kernel, Pinned};
use crate::upload::{DeviceWeights, Dw};

/// Why the CUDA backend could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// A driver call failed (no device, out of memory, launch failure, …).
    #[error("CUDA {call}: {message} (error {code})")]
    Driver {
        /// The call or kernel.
        call: &'static str,
        /// The driver's result code.
        code: i32,
        /// The driver's description.
        message: String,
    },
    /// The CUDA driver, NVRTC or cuBLAS library could not be loaded.
    #[error("the {0} library was not found: is an NVIDIA driver installed, and are the CUDA libraries on LD_LIBRARY_PATH?")]
    LibraryMissing(&'static str),
    /// NVRTC failed.
    #[error("NVRTC: {0}")]
    Nvrtc(String),
    /// A kernel is missing from the compiled module.
    #[error("{0}")]
    Kernel(String),
    /// cuBLAS failed.
    #[error("cuBLAS {call}: status {status}")]
    Cublas {
        /// The call.
        call: &'static str,
        /// Its status code.
        status: i32,
    },
    /// The model, its context and scratch do not fit in the device's free memory.
    #[error("the model does not fit on {device}: weights {weights_gib:.1} GiB + KV for a context of {ctx} tokens {kv_gib:.2} GiB + scratch {scratch_gib:.2} GiB = {need_gib:.1} GiB, but {free_gib:.1} GiB are free; the largest context that fits is {max_ctx} tokens (-c {max_ctx})")]
    DoesNotFit {
        /// Device name.
        device: String,
        /// Weight bytes (GiB).
        weights_gib: f64,
        /// Requested context.
        ctx: usize,
        /// KV bytes for it (GiB).
        kv_gib: f64,
        /// Scratch bytes (GiB).
        scratch_gib: f64,
        /// Total (GiB).
        need_gib: f64,
        /// Free device memory (GiB).
        free_gib: f64,
        /// The largest context that fits.
        max_ctx: usize,
    },
    /// Something about the model the backend cannot run.
    #[error("{0}")]
    Model(String),
    /// A session state that does not fit.
    #[error("session state: {0}")]
    State(String),
}

/// Which backend to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Choice {
    /// CUDA when a GPU is present, else the CPU.
    #[default]
    Auto,
    /// The CPU reference.
    Cpu,
    /// CUDA device 0 (an error without one).
    Cuda,
}

/// Options of the CUDA backend.
#[derive(Debug, Clone)]
pub struct CudaOptions {
    /// Device ordinal.
    pub ordinal: usize,
    /// Context the sessions will use (for the memory check before anything is allocated).
    pub ctx: usize,
    /// Record decode steps as CUDA graphs and replay them (`DS4_CUDA_GRAPHS=0` turns it off).
    pub graphs: bool,
    /// Show a progress bar while uploading (when stderr is a terminal).
    pub progress: bool,
    /// Routed experts of prefill chunks on the tensor cores (kernels/mmq.cu) where their
    /// types allow; else the split-f16 cuBLAS GEMMs per expert (`DS4_CUDA_MQ=0`).
    pub tensor_core_experts: bool,
    /// Attention of prefill chunks on the tensor cores when the stored rows are f16-exact
    /// (kernels/attention.cu `attn_mma`; `DS4_CUDA_ATT_MMA=0` runs `attn_partial` instead).
    pub tensor_core_attention: bool,
    /// Programmatic dependent launch on sm_90 and newer: each kernel is scheduled while the
    /// previous one drains (`DS4_CUDA_PDL=0` turns it off; off while profiling).
    pub dependent_launch: bool,
    /// Warps that share one output row of the routed experts' down product in decode, each
    /// taking every n-th expert slot (`DS4_CUDA_DN_SPLIT`, default 2; 1 is a warp per row).
    pub down_split: usize,
    /// The sublayer boundary of few rows as one `hc_step` launch (`DS4_CUDA_HC_STEP=0` runs
    /// hc_post, hc_mix, hc_pre_finish and rms_norm instead).
    pub hc_step: bool,
    /// On sm_90 and newer, that launch as one thread-block cluster a row (`hc_step_cl`;
    /// `DS4_CUDA_HC_CLUSTER=0` runs the ticketed `hc_step`, whose last block finishes the row).
    pub hc_cluster: bool,
    /// One-row Q8_0 products of at least this many rows run as resident warps that pipeline
    /// their rows (`mvp_q8_0`); default 4096, where `mv_q8_0` gives each row one warp.
    /// `DS4_CUDA_MVP=0` never does (always `mv_q8_0`, one block lifetime a row group).
    pub mvp_min_rows: usize,
    /// Run the forward pass's independent branches ([`ds4::backend::Lane`]) of a one-row batch
    /// on side streams beside the main line (crate::lanes; `DS4_CUDA_LANES=0` runs them in
    /// issue order).
    pub lanes: bool,
    /// Slices of a decode row's visible rows per head in `attn_partial` (`DS4_CUDA_ATT_SPLITS`,
    /// 1 to 64, default 16), merged by `attn_combine`.
    pub attn_splits: usize,
    /// Store IQ2_XXS weights as 4-bit codes (twice their bytes, a much cheaper decode dot) as
    /// far as the memory left after weights, KV and scratch allows (`DS4_CUDA_IQ2C=0`: never).
    pub iq2_codes: bool,
    /// A decode row's indexer scores with lanes over its visible rows (`idx_scores_rows`;
    /// `DS4_CUDA_IDX_ROWS=0` runs `idx_scores`, lanes over the heads, as chunks do).
    pub idx_rows: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            ordinal: 0,
            ctx: 32768,
            graphs: std::env::var("DS4_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            progress: true,
            tensor_core_experts: std::env::var("DS4_CUDA_MQ").map_or(true, |v| v != "0"),
            tensor_core_attention: std::env::var("DS4_CUDA_ATT_MMA").map_or(true, |v| v != "0"),
            dependent_launch: std::env::var("DS4_CUDA_PDL").map_or(true, |v| v != "0"),
            down_split: std::env::var("DS4_CUDA_DN_SPLIT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2),
            hc_step: std::env::var("DS4_CUDA_HC_STEP").map_or(true, |v| v != "0"),
            hc_cluster: std::env::var("DS4_CUDA_HC_CLUSTER").map_or(true, |v| v != "0"),
            mvp_min_rows: if std::env::var("DS4_CUDA_MVP").is_ok_and(|v| v == "0") {
                usize::MAX
            } else {
                4096
            },
            lanes: std::env::var("DS4_CUDA_LANES").map_or(true, |v| v != "0"),
            attn_splits: std::env::var("DS4_CUDA_ATT_SPLITS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(16),
            iq2_codes: std::env::var("DS4_CUDA_IQ2C").map_or(true, |v| v != "0"),
            idx_rows: std::env::var("DS4_CUDA_IDX_ROWS").map_or(true, |v| v != "0"),
        }
    }
}

/// Whether a CUDA driver library can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library by name; no symbol is called.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Figures of the load, for benchmarks and logs.
#[derive(Debug, Clone, Default)]
pub struct LoadStats {
    /// Seconds from start to ready (compile, allocate, upload).
    pub load_secs: f64,
    /// Seconds of the weight upload alone.
    pub upload_secs: f64,
    /// Weight bytes on the device.
    pub weight_bytes: usize,
    /// Scratch arena bytes.
    pub arena_bytes: usize,
    /// IQ2_XXS tensors stored as 4-bit codes ([`CudaOptions::iq2_codes`]).
    pub coded_tensors: usize,
}

/// Tensor storage of the CUDA backend: a device address (in the arena or a session).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DevT(pub u64);

/// Row metadata in device memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DevRows {
    pub tokens: u64,
    pub pos: u64,
}

/// Widest row (all its groups) whose 8-bit planes a norm or the attention writes beside its
/// output ([`NormPlanes`]): the attention output, 64 heads of 512.
pub(crate) const NORM_PLANES_COLS: usize = 32768;

/// The three-stage 8-bit planes of one activation row that an RMSNorm (or the attention, of
/// its output in the grouped projection's groups) wrote beside its output, for the weight
/// products that read that row next: `quant_q8` of the same row and groups returns them
/// instead of launching. They stay valid while only weight products (and their own activation
/// preparation) run: [`CudaBackend::launch`] drops them before any other kernel, and the
/// product launchers drop them before writing their outputs ([`CudaBackend::forget_planes`]).
/// Two buffers, so that the main line of a branch (crate::lanes) can write a row's planes
/// while the branch still reads those held when it began.
pub(crate) struct NormPlanes {
    bufs: [DevBuf; 2],
    held: Mutex<Option<HeldPlanes>>,
}

/// The row whose planes a [`NormPlanes`] buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeldPlanes {
    /// Device address of the row, width of a group and groups (the row is `groups · cols`).
    pub row: u64,
    pub cols: usize,
    pub groups: usize,
    /// Which buffer.
    pub buf: usize,
}

impl NormPlanes {
    fn new() -> Result<Self, CudaError> {
        let bytes = 3 * NORM_PLANES_COLS + NORM_PLANES_COLS / 32 * 4;
        Ok(NormPlanes {
            bufs: [DevBuf::new(bytes)?, DevBuf::new(bytes)?],
            held: Mutex::new(None),
        })
    }

    /// (planes, scales) addresses of buffer `i`.
    pub fn bufs(&self, i: usize) -> (u64, u64) {
        let b = &self.bufs[i & 1];
        (b.ptr, b.ptr + 3 * NORM_PLANES_COLS as u64)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<HeldPlanes>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Kernels that leave [`NormPlanes`] valid: the weight products, their activation preparation
/// and the router's selection, whose launchers forget the planes of any row they write.
fn keeps_norm_planes(name: &str) -> bool {
    name.starts_with("mv")
        || name.starts_with("gu_")
        || name.starts_with("dn_")
        || matches!(name, "quant_q8" | "route")
}

/// The CUDA backend on one device.
pub struct CudaBackend {
    pub(crate) dev: Device,
    pub(crate) kernels: HashMap<&'static str, Kernel>,
    pub(crate) weights: DeviceWeights,
    pub(crate) arena: Arena,
    pub(crate) cfg: Config,
    pub(crate) gemm: Mutex<Option<gemm::Gemm>>,
    rows_buf: DevBuf,
    /// One zeroed ticket per row of a chunk for kernels whose last block of a row finishes the
    /// row's work (hc_step); that block resets its ticket.
    pub(crate) tickets: DevBuf,
    pub(crate) norm_planes: NormPlanes,
    pub(crate) lanes: lanes::Lanes,
    rows_host: Mutex<Pinned>,
    /// Pinned staging of reads up to READ_PINNED bytes (a decode step's logits).
    read_host: Mutex<Pinned>,
    graphs: Mutex<HashMap<(ds4::backend::StepKey, u64), GraphExec>>,
    no_graph: Mutex<HashSet<(ds4::backend::StepKey, u64)>>,
    opts: CudaOptions,
    next_state: AtomicU64,
    stats: LoadStats,
    pub(crate) profile: Option<profile::Profile>,
    pub(crate) timeline: Option<timeline::Timeline>,
    pub(crate) sampling: ops::sample::Sampling,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.dev.name)
            .finish_non_exhaustive()
    }
}

pub(crate) fn be_err(e: CudaError) -> BackendError {
    BackendError::new("cuda", e)
}

impl CudaBackend {
    /// Opens the device, compiles the kernels, checks that weights, KV for `opts.ctx` and
    /// scratch fit, and uploads the model.
    pub fn new(model: &Model, opts: &CudaOptions) -> Result<Self, CudaError> {
        let t0 = Instant::now();
        // cudarc panics when it first touches a library it cannot load: check before.
        if !driver_present() {
            return Err(CudaError::LibraryMissing("CUDA driver (libcuda)"));
        }
        // SAFETY: only tries to dlopen the library by name.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(CudaError::LibraryMissing("NVRTC (libnvrtc)"));
        }
        let mut dev = Device::open(opts.ordinal)?;
        let profile = std::env::var("DS4_CUDA_PROFILE")
            .is_ok_and(|v| v != "0")
            .then(profile::Profile::default);
        // Timing events between launches would serialise them anyway.
        dev.pdl = opts.dependent_launch && dev.cc.0 >= 9 && profile.is_none();
        let cfg = model.config.clone();
        check_shapes(&cfg)?;
        // Memory check before any large allocation.
        let weight_bytes = upload::total_bytes(&model.weights, &upload::Coded::new());
        let staging = upload::staging_bytes(&model.weights);
        let arena_bytes = arena::arena_bytes(&cfg, PREFILL_CHUNK, opts.ctx);
        let kv = state::state_bytes(&cfg, opts.ctx);
        let margin = 512usize << 20; // context, cuBLAS, graphs, fragmentation
        let (free, _) = dev.mem_info()?;
        let need = weight_bytes + staging + arena_bytes + kv + margin;
        if need > free {
            let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
            let fixed = weight_bytes + staging + margin;
            let mut max_ctx = 0usize;
            let mut c = 1024usize;
            while c <= 1 << 20 {
                let n = fixed
                    + arena::arena_bytes(&cfg, PREFILL_CHUNK, c)
                    + state::state_bytes(&cfg, c);
                if n > free {
                    break;
                }
                max_ctx = c;
                c *= 2;
            }
            return Err(CudaError::DoesNotFit {
                device: dev.name.clone(),
                weights_gib: gib(weight_bytes),
                ctx: opts.ctx,
                kv_gib: gib(kv),
                scratch_gib: gib(arena_bytes + staging),
                need_gib: gib(need),
                free_gib: gib(free),
                max_ctx,
            });
        }
        // What is left, less room for a second session of this context (a session that
        // replaces another is made before the old one goes) and 1 GiB, may hold IQ2_XXS codes.
        let coded = if opts.iq2_codes {
            let reserve = kv + (1usize << 30);
            upload::plan_codes(&model.weights, free.saturating_sub(need + reserve))
        } else {
            upload::Coded::new()
        };
        if !coded.is_empty() {
            let n = upload::tensors(&model.weights)
                .iter()
                .filter(|t| t.ty == ds4::gguf::GgmlType::IQ2_XXS)
                .count();
            let extra = upload::total_bytes(&model.weights, &coded) - weight_bytes;
            tracing_line(&format!(
                "IQ2_XXS weights as 4-bit codes: {} of {n} tensors (+{:.1} GiB)",
                coded.len(),
                extra as f64 / (1u64 << 30) as f64
            ));
        }
        let timeline = timeline::Timeline::from_env(&dev)?;
        let src = timeline.as_ref().map_or(String::new(), |t| t.define()) + &nvrtc::source();
        let image = nvrtc::compile(&src, dev.cc)?;
        let smem = (dev.smem_optin - 8 * 1024).max(48 * 1024);
        let clusters = if dev.cc.0 >= 9 {
            nvrtc::CLUSTER_KERNELS
        } else {
            &[]
        };
        let kernels: HashMap<&'static str, Kernel> =
            driver::load_module(&image, nvrtc::KERNELS, nvrtc::DYNAMIC_SMEM, smem, clusters)?
                .into_iter()
                .map(|k| (k.name, k))
                .collect();
        let tu = Instant::now();
        let bar = progress_bar(opts.progress, model.file.bytes().len());
        let mut last_log = Instant::now();
        let weights = upload::upload(
            &dev,
            &kernels,
            model.file.bytes(),
            &model.weights,
            &coded,
            &mut |done, total| {
                if let Some(b) = &bar {
                    b.set_position(done as u64);
                } else if last_log.elapsed().as_secs() >= 5 || done == total {
                    last_log = Instant::now();
                    tracing_line(&format!(
                        "uploading weights: {:.1} / {:.1} GiB",
                        done as f64 / (1u64 << 30) as f64,
                        total as f64 / (1u64 << 30) as f64
                    ));
                }
            },
        )?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let upload_secs = tu.elapsed().as_secs_f64();
        let arena = Arena::new(arena_bytes)?;
        let rows_buf = DevBuf::new(PREFILL_CHUNK * 8)?;
        let tickets = DevBuf::new(PREFILL_CHUNK * 4)?;
        dev.memset(tickets.ptr, 0, tickets.len)?;
        let rows_host = Mutex::new(Pinned::new(PREFILL_CHUNK * 8)?);
        let read_host = Mutex::new(Pinned::new(READ_PINNED)?);
        let sampling = ops::sample::Sampling::new(&dev)?;
        let stats = LoadStats {
            load_secs: t0.elapsed().as_secs_f64(),
            upload_secs,
            weight_bytes: weights.bytes,
            arena_bytes,
            coded_tensors: coded.len(),
        };
        Ok(CudaBackend {
            dev,
            kernels,
            weights,
            arena,
            cfg,
            gemm: Mutex::new(None),
            rows_buf,
            tickets,
            norm_planes: NormPlanes::new()?,
            lanes: lanes::Lanes::new(opts.lanes),
            rows_host,
            read_host,
            graphs: Mutex::new(HashMap::new()),
            no_graph: Mutex::new(HashSet::new()),
            opts: opts.clone(),
            next_state: AtomicU64::new(1),
            stats,
            profile,
            timeline,
            sampling,
        })
    }

    pub(crate) fn opts_idx_rows(&self) -> bool {
        self.opts.idx_rows
    }

    pub(crate) fn opts_graphs(&self) -> bool {
        self.opts.graphs
    }

    pub(crate) fn opts_tensor_core_experts(&self) -> bool {
        self.opts.tensor_core_experts
    }

    pub(crate) fn opts_tensor_core_attention(&self) -> bool {
        self.opts.tensor_core_attention
    }

    pub(crate) fn opts_down_split(&self) -> usize {
        self.opts.down_split
    }

    pub(crate) fn opts_attn_splits(&self) -> usize {
        self.opts.attn_splits.clamp(1, 64) // ATT_SPLITS_MAX of kernels/attention.cu
    }

    pub(crate) fn opts_hc_step(&self) -> bool {
        self.opts.hc_step
    }

    /// Whether the boundary may run as thread-block clusters (the option, and sm_90 or newer).
    pub(crate) fn opts_hc_cluster(&self) -> bool {
        self.opts.hc_cluster && self.dev.cc.0 >= 9
    }

    pub(crate) fn opts_mvp_min_rows(&self) -> usize {
        self.opts.mvp_min_rows
    }

    pub(crate) fn sm_count(&self) -> usize {
        self.dev.sm_count.max(1) as usize
    }

    /// The device's name.
    pub fn device_name(&self) -> &str {
        &self.dev.name
    }

    /// Figures of the load.
    pub fn load_stats(&self) -> &LoadStats {
        &self.stats
    }

    /// (free, total) device memory in bytes now.
    pub fn mem_info(&self) -> Result<(usize, usize), CudaError> {
        self.dev.make_current()?;
        self.dev.mem_info()
    }

    pub(crate) fn k(&self, name: &'static str) -> Result<&Kernel, CudaError> {
        self.kernels
            .get(name)
            .ok_or_else(|| CudaError::Kernel(format!("kernel `{name}` was not loaded")))
    }

    /// Launches kernel `name` (see driver::Device::launch).
    pub(crate) fn launch(
        &self,
        name: &'static str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &mut [*mut std::ffi::c_void],
    ) -> Result<(), BackendError> {
        let k = self.k(name).map_err(be_err)?;
        if !keeps_norm_planes(name) {
            self.drop_planes();
        }
        match &self.profile {
            None => self.dev.launch(k, grid, block, smem, args).map_err(be_err),
            Some(p) => p
                .time(&self.dev, name, || {
                    self.dev.launch(k, grid, block, smem, args)
                })
                .map_err(be_err),
        }
    }

    /// As [`CudaBackend::launch`], in thread-block clusters of `cluster` blocks.
    pub(crate) fn launch_cluster(
        &self,
        name: &'static str,
        grid: (u32, u32, u32),
        cluster: (u32, u32, u32),
        block: u32,
        args: &mut [*mut std::ffi::c_void],
    ) -> Result<(), BackendError> {
        let k = self.k(name).map_err(be_err)?;
        if !keeps_norm_planes(name) {
            self.drop_planes();
        }
        match &self.profile {
            None => self.dev.launch_cluster(k, grid, cluster, block, 0, args),
            Some(p) => p.time(&self.dev, name, || {
                self.dev.launch_cluster(k, grid, cluster, block, 0, args)
            }),
        }
        .map_err(be_err)
    }

    /// Runs `call` (work that is not one of our kernels: a cuBLAS GEMM) under the profiler's
    /// name `name` when profiling.
    pub(crate) fn timed(
        &self,
        name: &'static str,
        call: impl FnOnce() -> Result<(), CudaError>,
    ) -> Result<(), BackendError> {
        match &self.profile {
            None => call().map_err(be_err),
            Some(p) => p.time(&self.dev, name, call).map_err(be_err),
        }
    }

    /// The (planes, scales) buffer a norm of a `cols`-wide row `row` may write its planes to,
    /// and the token to [`CudaBackend::hold_planes`] them with; None when it writes none (a
    /// row too wide, or a branch's: crate::lanes).
    pub(crate) fn planes_to_write(
        &self,
        row: u64,
        cols: usize,
        groups: usize,
    ) -> Option<(u64, u64, HeldPlanes)> {
        if !cols.is_multiple_of(32) || cols * groups > NORM_PLANES_COLS {
            return None;
        }
        let buf = self.lanes.planes_buffer(*self.norm_planes.held())?;
        let (q, d) = self.norm_planes.bufs(buf);
        Some((
            q,
            d,
            HeldPlanes {
                row,
                cols,
                groups,
                buf,
            },
        ))
    }

    /// Marks planes as held in [`NormPlanes`] (after the launch that writes them).
    pub(crate) fn hold_planes(&self, h: HeldPlanes) {
        *self.norm_planes.held() = Some(h);
    }

    /// The held planes of `row` when they are those of `groups` groups of `cols` columns.
    pub(crate) fn held_planes(&self, row: u64, cols: usize, groups: usize) -> Option<(u64, u64)> {
        let h = (*self.norm_planes.held())?;
        (h.row == row && h.cols == cols && h.groups == groups).then(|| self.norm_planes.bufs(h.buf))
    }

    /// Drops the held planes, whatever row they belong to.
    pub(crate) fn drop_planes(&self) {
        *self.norm_planes.held() = None;
    }

    /// Drops the held planes if they are those of `row` (a launcher about to write it).
    pub(crate) fn forget_planes(&self, row: u64) {
        self.lanes.forgetting(row);
        let mut h = self.norm_planes.held();
        if h.is_some_and(|h| h.row == row) {
            *h = None;
        }
    }

    pub(crate) fn profiling(&self) -> bool {
        self.profile.is_some()
    }

    /// The device copy of a weight.
    pub(crate) fn w(&self, t: &TensorRef) -> Result<Dw, BackendError> {
        self.weights
            .by_offset
            .get(&t.range.start)
            .copied()
            .ok_or_else(|| {
                BackendError::new("cuda", format!("weight `{}` is not on the device", t.name))
            })
    }

    /// The device copy of a parameter vector of the model (by its host address).
    pub(crate) fn p(&self, v: &[f32]) -> Result<u64, BackendError> {
        self.weights
            .params
            .get(&(v.as_ptr() as usize))
            .copied()
            .ok_or_else(|| BackendError::new("cuda", "a parameter vector is not on the device"))
    }

    /// The device copy of a `tid2eid` table.
    pub(crate) fn p_u32(&self, v: &[u32]) -> Result<u64, BackendError> {
        self.weights
            .params
            .get(&(v.as_ptr() as usize))
            .copied()
            .ok_or_else(|| BackendError::new("cuda", "a tid2eid table is not on the device"))
    }

    /// `bytes` of arena scratch for the current forward pass.
    pub(crate) fn scratch(&self, bytes: usize) -> Result<u64, BackendError> {
        self.arena.alloc(bytes).map_err(be_err)
    }

    /// A copy of the host values `v` (4-byte scalars, e.g. i32 or f32) in new arena scratch.
    pub(crate) fn scratch_from<T: Copy + ToLeBytes4>(&self, v: &[T]) -> Result<u64, BackendError> {
        let d = self.scratch(v.len() * 4)?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.le_bytes()).collect();
        self.dev.htod(d, &bytes).map_err(be_err)?;
        Ok(d)
    }

    fn write_rows(&self, tokens: &[u32], pos0: usize) -> Result<DevRows, CudaError> {
        let n = tokens.len();
        if n > PREFILL_CHUNK {
            return Err(CudaError::Model(format!(
                "a batch of {n} rows exceeds the chunk of {PREFILL_CHUNK}"
            )));
        }
        let mut host = self.rows_host.lock().unwrap_or_else(|e| e.into_inner());
        let h = host.as_mut_slice();
        for (i, &t) in tokens.iter().enumerate() {
            h[4 * i..4 * i + 4].copy_from_slice(&(t as i32).to_le_bytes());
            let p = (pos0 + i) as i32;
            h[4 * (PREFILL_CHUNK + i)..4 * (PREFILL_CHUNK + i) + 4]
                .copy_from_slice(&p.to_le_bytes());
        }
        // Tokens then positions, in one copy of both ranges and what lies between them (at most
        // 16 KB; one driver call on a decode step's host path); the pinned buffer is reused only
        // after the stream has passed the copy.
        self.dev
            .htod(self.rows_buf.ptr, &h[..4 * (PREFILL_CHUNK + n)])?;
        self.dev.sync()?;
        Ok(self.dev_rows())
    }

    /// The row buffer: tokens, then positions from PREFILL_CHUNK on.
    pub(crate) fn dev_rows(&self) -> DevRows {
        DevRows {
            tokens: self.rows_buf.ptr,
            pos: self.rows_buf.ptr + 4 * PREFILL_CHUNK as u64,
        }
    }
}

/// Reads up to this many bytes go through the pinned staging buffer (CudaBackend::read_f32).
const READ_PINNED: usize = 4 << 20;

impl CudaBackend {
    /// `len` bytes (F32 values) at device address `at`, as floats: through the pinned staging
    /// buffer when they fit (one DMA, no fresh pageable pages for the driver to stage through:
    /// a decode step's 517 KB of logits), else through a pageable buffer.
    pub(crate) fn read_f32(&self, at: u64, len: usize) -> Result<Vec<f32>, CudaError> {
        let conv = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        if len <= READ_PINNED {
            let mut host = self.read_host.lock().unwrap_or_else(|e| e.into_inner());
            let b = &mut host.as_mut_slice()[..len];
            self.dev.dtoh(b, at)?;
            return Ok(conv(b));
        }
        let mut b = vec![0u8; len];
        self.dev.dtoh(&mut b, at)?;
        Ok(conv(&b))
    }

    /// Ends the host phase `name` of the decode timeline (timeline.rs), if it is on.
    pub(crate) fn mark(&self, name: &'static str, replayed: bool) {
        if let Some(t) = &self.timeline {
            t.mark(name, replayed, false);
        }
    }

    /// As [`CudaBackend::mark`], closing a step's cycle (its output read).
    pub(crate) fn mark_end(&self, name: &'static str) {
        if let Some(t) = &self.timeline {
            t.mark(name, false, true);
        }
    }
}

fn tracing_line(s: &str) {
    eprintln!("ds4: {s}");
}

fn progress_bar(on: bool, total: usize) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !on || !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new(total as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "ds4: uploading weights {bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(b)
}

/// Shapes the kernels are written for (the real model's, and the test models').
fn check_shapes(cfg: &Config) -> Result<(), CudaError> {
    let bad = |what: String| Err(CudaError::Model(format!("the CUDA kernels need {what}")));
    if !cfg.head_dim.is_multiple_of(32) || cfg.head_dim > 512 {
        return bad(format!(
            "a head dim that is a multiple of 32 and ≤ 512 (found {})",
            cfg.head_dim
        ));
    }
    if cfg.idx_head_dim > 128 || !cfg.idx_head_dim.is_power_of_two() {
        return bad(format!(
            "an indexer head dim that is a power of two ≤ 128 (found {})",
            cfg.idx_head_dim
        ));
    }
    if !cfg.idx_heads.is_multiple_of(8) || cfg.idx_heads > 64 {
        return bad(format!(
            "indexer heads a multiple of 8, ≤ 64 (found {})",
            cfg.idx_heads
        ));
    }
    if cfg.n_rot > 128 || cfg.n_hc > 8 || cfg.n_expert > 1024 || cfg.n_expert_used > 16 {
        return bad("n_rot ≤ 128, ≤ 8 HC streams, ≤ 1024 experts, ≤ 16 used".into());
    }
    Ok(())
}

/// Opens the backend `choice` asks for; `log` receives one line naming it.
pub fn open_backend(
    model: &Arc<Model>,
    choice: Choice,
    opts: &CudaOptions,
    log: &mut dyn FnMut(&str),
) -> Result<Box<dyn Backend + Send>, CudaError> {
    let cuda = match choice {
        Choice::Cpu => false,
        Choice::Cuda => true,
        Choice::Auto => driver_present() && gpu_count() > 0,
    };
    if !cuda {
        log("CPU backend");
        return Ok(Box::new(CpuBackend::new(model.file.clone())));
    }
    let be = CudaBackend::new(model, opts)?;
    let s = be.load_stats();
    log(&format!(
        "CUDA backend on {}: {:.1} GiB of weights uploaded in {:.1} s ({:.1} GB/s), ready in {:.1} s",
        be.device_name(),
        s.weight_bytes as f64 / (1u64 << 30) as f64,
        s.upload_secs,
        s.weight_bytes as f64 / s.upload_secs.max(1e-9) / 1e9,
        s.load_secs
    ));
    Ok(Box::new(be))
}

/// GPUs the driver sees (0 when it cannot initialise).
fn gpu_count() -> i32 {
    use cudarc::driver::sys;
    let mut n = 0;
    // SAFETY: plain queries with a valid out-pointer.
    unsafe {
        if sys::cuInit(0) != sys::CUresult::CUDA_SUCCESS {
            return 0;
        }
        if sys::cuDeviceGetCount(&mut n) != sys::CUresult::CUDA_SUCCESS {
            return 0;
        }
    }
    n
}

mod backend_impl;

/// Host scalars that [`CudaBackend::scratch_from`] copies to the device.
pub(crate) trait ToLeBytes4 {
    fn le_bytes(self) -> [u8; 4];
}

impl ToLeBytes4 for i32 {
    fn le_bytes(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

impl ToLeBytes4 for f32 {
    fn le_bytes(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        if let Some(p) = &self.profile {
            let _ = self.dev.make_current();
            eprintln!("{}", p.report(&self.dev));
        }
        if let Some(t) = &self.timeline {
            let _ = self.dev.make_current();
            match t.report(&self.dev) {
                Ok(r) => eprintln!("{r}"),
                Err(e) => eprintln!("ds4 CUDA timeline: {e}"),
            }
        }
    }
}
