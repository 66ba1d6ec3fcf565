//! A thin safe layer over the CUDA driver API (cudarc's `driver::sys`, loaded at run time):
//! one device with its primary context, its stream and side streams for branches of
//! independent work ([`Device::fork`]), owned device and pinned host buffers, kernel launches
//! from an argument list, stream capture into graphs, events. Every call's result is checked
//! and turned into a [`CudaError`] naming the call.
#![allow(unsafe_code)]

use std::ffi::{c_void, CStr, CString};

use cudarc::driver::sys;

use crate::CudaError;

/// Checks a driver result.
pub(crate) fn check(call: &'static str, r: sys::CUresult) -> Result<(), CudaError> {
    if r == sys::CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    let mut s: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: cuGetErrorString writes a pointer to a static string (or leaves it null).
    unsafe { sys::cuGetErrorString(r, &mut s) };
    let message = if s.is_null() {
        format!("{r:?}")
    } else {
        // SAFETY: the driver returned a NUL-terminated static string.
        unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
    };
    Err(CudaError::Driver {
        call,
        code: r as i32,
        message,
    })
}

/// Side streams: branches that can run beside the main line at once.
pub(crate) const SIDE_STREAMS: usize = 2;

/// The device, its primary context and the stream every operation runs on.
pub(crate) struct Device {
    pub ctx: sys::CUcontext,
    pub stream: sys::CUstream,
    /// The streams of branches' operations, between [`Device::fork`] and [`Device::join`].
    side: [sys::CUstream; SIDE_STREAMS],
    /// Where operations go now: 0 the main stream, i + 1 side stream i.
    on_side: std::sync::atomic::AtomicUsize,
    /// The fork point and each side stream's join point (timing off: they only order streams).
    fork_ev: sys::CUevent,
    join_ev: [sys::CUevent; SIDE_STREAMS],
    pub name: String,
    pub cc: (i32, i32),
    pub smem_optin: i32,
    /// Streaming multiprocessors (the grid of the kernels that stay resident).
    pub sm_count: i32,
    /// Launch kernels with programmatic stream serialization (see `launch`).
    pub pdl: bool,
}

// SAFETY: the context and stream handles are plain driver handles, usable from any thread once
// the context is made current there (`Device::make_current`, called at every backend entry).
unsafe impl Send for Device {}
// SAFETY: as above; the driver serialises concurrent calls on one stream.
unsafe impl Sync for Device {}

fn attr(dev: sys::CUdevice, a: sys::CUdevice_attribute) -> Result<i32, CudaError> {
    let mut v = 0i32;
    // SAFETY: v is a valid out-pointer; dev came from cuDeviceGet.
    check("cuDeviceGetAttribute", unsafe {
        sys::cuDeviceGetAttribute(&mut v, a, dev)
    })?;
    Ok(v)
}

impl Device {
    /// Opens device `ordinal`.
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        // SAFETY: plain driver initialisation calls with valid out-pointers.
        unsafe {
            check("cuInit", sys::cuInit(0))?;
            let mut dev: sys::CUdevice = 0;
            check("cuDeviceGet", sys::cuDeviceGet(&mut dev, ordinal as i32))?;
            let mut ctx: sys::CUcontext = std::ptr::null_mut();
            check(
                "cuDevicePrimaryCtxRetain",
                sys::cuDevicePrimaryCtxRetain(&mut ctx, dev),
            )?;
            check("cuCtxSetCurrent", sys::cuCtxSetCurrent(ctx))?;
            let mut stream: sys::CUstream = std::ptr::null_mut();
            check("cuStreamCreate", sys::cuStreamCreate(&mut stream, 1))?; // non-blocking
            let mut side = [std::ptr::null_mut(); SIDE_STREAMS];
            let mut join_ev = [std::ptr::null_mut(); SIDE_STREAMS];
            let mut fork_ev: sys::CUevent = std::ptr::null_mut();
            check("cuEventCreate", sys::cuEventCreate(&mut fork_ev, 2))?; // CU_EVENT_DISABLE_TIMING
            for (s, e) in side.iter_mut().zip(join_ev.iter_mut()) {
                check("cuStreamCreate", sys::cuStreamCreate(s, 1))?;
                check("cuEventCreate", sys::cuEventCreate(e, 2))?;
            }
            let mut buf = [0 as std::ffi::c_char; 256];
            check(
                "cuDeviceGetName",
                sys::cuDeviceGetName(buf.as_mut_ptr(), 256, dev),
            )?;
            let name = CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned();
            use sys::CUdevice_attribute as A;
            let cc = (
                attr(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            );
            let smem_optin = attr(
                dev,
                A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )?;
            let sm_count = attr(dev, A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
            Ok(Device {
                ctx,
                stream,
                side,
                on_side: std::sync::atomic::AtomicUsize::new(0),
                fork_ev,
                join_ev,
                name,
                cc,
                smem_optin,
                sm_count,
                pdl: false,
            })
        }
    }

    /// Makes the context current on the calling thread.
    pub fn make_current(&self) -> Result<(), CudaError> {
        // SAFETY: ctx is the retained primary context.
        check("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(self.ctx) })
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize), CudaError> {
        let (mut f, mut t) = (0usize, 0usize);
        // SAFETY: valid out-pointers.
        check("cuMemGetInfo", unsafe {
            sys::cuMemGetInfo_v2(&mut f, &mut t)
        })?;
        Ok((f, t))
    }

    /// The stream operations go to now: a side stream inside a branch, else the main one.
    fn cur(&self) -> sys::CUstream {
        match self.on_side.load(std::sync::atomic::Ordering::Relaxed) {
            0 => self.stream,
            i => self.side[(i - 1).min(SIDE_STREAMS - 1)],
        }
    }

    /// Starts branch `i` (< [`SIDE_STREAMS`]): what follows runs on side stream `i`, after
    /// everything the main stream was given before branch 0 began. (In a stream capture the
    /// side stream joins the capture here.)
    pub fn fork(&self, i: usize) -> Result<(), CudaError> {
        let i = i.min(SIDE_STREAMS - 1);
        // SAFETY: live event and streams of this context.
        unsafe {
            if i == 0 {
                check(
                    "cuEventRecord",
                    sys::cuEventRecord(self.fork_ev, self.stream),
                )?;
            }
            check(
                "cuStreamWaitEvent",
                sys::cuStreamWaitEvent(self.side[i], self.fork_ev, 0),
            )?;
        }
        self.on_side
            .store(i + 1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Sends what follows to the main stream again, beside the branches (not after them).
    pub fn to_main(&self) {
        self.on_side.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ends branches 0..n: what follows on the main stream runs after them too.
    pub fn join(&self, n: usize) -> Result<(), CudaError> {
        for i in 0..n.min(SIDE_STREAMS) {
            // SAFETY: live events and streams of this context.
            unsafe {
                check(
                    "cuEventRecord",
                    sys::cuEventRecord(self.join_ev[i], self.side[i]),
                )?;
                check(
                    "cuStreamWaitEvent",
                    sys::cuStreamWaitEvent(self.stream, self.join_ev[i], 0),
                )?;
            }
        }
        self.to_main();
        Ok(())
    }

    /// Waits for every stream.
    pub fn sync(&self) -> Result<(), CudaError> {
        for &s in self.side.iter().chain([&self.stream]) {
            // SAFETY: the streams are valid for the device's lifetime.
            check("cuStreamSynchronize", unsafe {
                sys::cuStreamSynchronize(s)
            })?;
        }
        Ok(())
    }

    /// Copies host bytes to device memory (stream-ordered; `src` must stay valid until the
    /// stream passes the copy — callers either sync or use pinned buffers they own).
    pub fn htod(&self, dst: u64, src: &[u8]) -> Result<(), CudaError> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: dst points to at least src.len() device bytes (callers allocate them).
        check("cuMemcpyHtoDAsync", unsafe {
            sys::cuMemcpyHtoDAsync_v2(dst, src.as_ptr() as *const c_void, src.len(), self.cur())
        })
    }

    /// Copies device bytes to the host and waits.
    pub fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<(), CudaError> {
        if dst.is_empty() {
            return Ok(());
        }
        // SAFETY: src holds at least dst.len() bytes; the sync keeps dst borrowed until done.
        check("cuMemcpyDtoHAsync", unsafe {
            sys::cuMemcpyDtoHAsync_v2(dst.as_mut_ptr() as *mut c_void, src, dst.len(), self.cur())
        })?;
        self.sync()
    }

    /// Sets `n` bytes to `v`.
    pub fn memset(&self, dst: u64, v: u8, n: usize) -> Result<(), CudaError> {
        if n == 0 {
            return Ok(());
        }
        // SAFETY: dst holds at least n bytes.
        check("cuMemsetD8Async", unsafe {
            sys::cuMemsetD8Async(dst, v, n, self.cur())
        })
    }

    /// Launches `f` over `grid` with `block` threads and `smem` bytes of dynamic shared memory.
    /// `args` are pointers to the kernel's parameters in order.
    pub fn launch(
        &self,
        f: &Kernel,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        self.launch_in(f, grid, None, block, smem, args)
    }

    /// As [`Device::launch`], in thread-block clusters of `cluster` blocks (each dimension of
    /// `grid` a multiple of it; sm_90 and later, up to 16 blocks for the kernels that
    /// [`load_module`] allows it).
    pub fn launch_cluster(
        &self,
        f: &Kernel,
        grid: (u32, u32, u32),
        cluster: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        self.launch_in(f, grid, Some(cluster), block, smem, args)
    }

    fn launch_in(
        &self,
        f: &Kernel,
        grid: (u32, u32, u32),
        cluster: Option<(u32, u32, u32)>,
        block: u32,
        smem: u32,
        args: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        let zero = || sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            // SAFETY: an all-zero value is valid for every member of the union.
            value: unsafe { std::mem::zeroed() },
        };
        let mut attrs = [zero(), zero()];
        let mut n = 0;
        // With `pdl`, each kernel may be scheduled while the one before it drains: every kernel
        // begins with `grid_dep_sync()` (kernels/common.cuh), which waits for its predecessor's
        // completion before touching memory. Stream capture keeps these as programmatic edges.
        if self.pdl {
            attrs[n].value.programmaticStreamSerializationAllowed = 1;
            n += 1;
        }
        if let Some((x, y, z)) = cluster {
            attrs[n].id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
            attrs[n].value.clusterDim = sys::CUlaunchAttributeValue_union__bindgen_ty_1 { x, y, z };
            n += 1;
        }
        let cfg = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: smem,
            hStream: self.cur(),
            attrs: attrs.as_mut_ptr(),
            numAttrs: n as u32,
        };
        // SAFETY: `args` points at values matching the kernel's parameter list (each launcher
        // builds it next to the kernel's signature); every pointer parameter refers to device
        // memory sized for the grid the launcher computes; `cfg` and `attrs` outlive the call.
        let r =
            unsafe { sys::cuLaunchKernelEx(&cfg, f.func, args.as_mut_ptr(), std::ptr::null_mut()) };
        check(f.name, r)
    }

    /// Starts recording the stream into a graph.
    pub fn begin_capture(&self) -> Result<(), CudaError> {
        // SAFETY: the stream is valid; thread-local mode keeps other threads' calls out.
        check("cuStreamBeginCapture", unsafe {
            sys::cuStreamBeginCapture_v2(
                self.stream,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        })
    }

    /// Ends the recording and instantiates it.
    pub fn end_capture(&self) -> Result<GraphExec, CudaError> {
        let mut g: sys::CUgraph = std::ptr::null_mut();
        // SAFETY: capture was begun on this stream.
        check("cuStreamEndCapture", unsafe {
            sys::cuStreamEndCapture(self.stream, &mut g)
        })?;
        let mut e: sys::CUgraphExec = std::ptr::null_mut();
        // SAFETY: g is the graph just captured; it is destroyed after instantiation.
        let r = unsafe { sys::cuGraphInstantiateWithFlags(&mut e, g, 0) };
        // SAFETY: the executable graph does not need the graph it came from.
        unsafe { sys::cuGraphDestroy(g) };
        check("cuGraphInstantiate", r)?;
        Ok(GraphExec(e))
    }

    /// Replays a graph on the stream.
    pub fn replay(&self, g: &GraphExec) -> Result<(), CudaError> {
        // SAFETY: g is a live executable graph of this context.
        check("cuGraphLaunch", unsafe {
            sys::cuGraphLaunch(g.0, self.stream)
        })
    }
}

/// An instantiated graph.
pub(crate) struct GraphExec(sys::CUgraphExec);

// SAFETY: a graph handle may be launched from any thread with the context current.
unsafe impl Send for GraphExec {}

impl Drop for GraphExec {
    fn drop(&mut self) {
        // SAFETY: the handle came from cuGraphInstantiate and is dropped once.
        unsafe { sys::cuGraphExecDestroy(self.0) };
    }
}

/// An owned device allocation.
pub(crate) struct DevBuf {
    pub ptr: u64,
    pub len: usize,
}

impl DevBuf {
    /// `len` bytes of device memory (contents unspecified).
    pub fn new(len: usize) -> Result<Self, CudaError> {
        let mut ptr = 0u64;
        // SAFETY: valid out-pointer; a zero-length request allocates one byte.
        check("cuMemAlloc", unsafe {
            sys::cuMemAlloc_v2(&mut ptr, len.max(1))
        })?;
        Ok(DevBuf { ptr, len })
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        // SAFETY: ptr came from cuMemAlloc and is freed once.
        unsafe { sys::cuMemFree_v2(self.ptr) };
    }
}

/// A page-locked host buffer (fast, asynchronous uploads).
pub(crate) struct Pinned {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is plain memory owned by this value.
unsafe impl Send for Pinned {}
// SAFETY: shared access only reads.
unsafe impl Sync for Pinned {}

impl Pinned {
    /// `len` bytes of pinned host memory.
    pub fn new(len: usize) -> Result<Self, CudaError> {
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        check("cuMemHostAlloc", unsafe {
            sys::cuMemHostAlloc(&mut p, len.max(1), 0)
        })?;
        Ok(Pinned {
            ptr: p as *mut u8,
            len,
        })
    }

    /// The buffer's address, which kernels may also use: under unified addressing (every GPU
    /// this backend runs on) pinned host memory is reachable from the device at its host
    /// address.
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    /// The i32 at index `i`, read afresh (a kernel may have written it since).
    pub fn read_i32(&self, i: usize) -> Option<i32> {
        if (i + 1) * 4 > self.len {
            return None;
        }
        // SAFETY: in bounds (checked above); cuMemHostAlloc memory is page-aligned, so the i32
        // is aligned; a volatile read because the device writes it behind the compiler's back.
        Some(unsafe { std::ptr::read_volatile((self.ptr as *const i32).add(i)) })
    }

    /// The buffer.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr holds len bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: ptr came from cuMemHostAlloc and is freed once.
        unsafe { sys::cuMemFreeHost(self.ptr as *mut c_void) };
    }
}

/// A stream event.
pub(crate) struct Event(sys::CUevent);

// SAFETY: plain driver handle.
unsafe impl Send for Event {}

impl Event {
    pub fn new() -> Result<Self, CudaError> {
        Self::with_flags(0) // timing enabled
    }

    /// An event only waited on (no timing, which makes recording and waiting cheaper).
    pub fn for_sync() -> Result<Self, CudaError> {
        Self::with_flags(2) // CU_EVENT_DISABLE_TIMING
    }

    fn with_flags(flags: u32) -> Result<Self, CudaError> {
        let mut e: sys::CUevent = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        check("cuEventCreate", unsafe {
            sys::cuEventCreate(&mut e, flags)
        })?;
        Ok(Event(e))
    }

    pub fn record(&self, dev: &Device) -> Result<(), CudaError> {
        // SAFETY: both handles are live.
        check("cuEventRecord", unsafe {
            sys::cuEventRecord(self.0, dev.stream)
        })
    }

    /// Milliseconds from `self` to `later` (both recorded and completed).
    pub fn elapsed_ms(&self, later: &Event) -> Result<f32, CudaError> {
        let mut ms = 0f32;
        // SAFETY: both events are live and recorded on this context.
        check("cuEventElapsedTime", unsafe {
            sys::cuEventElapsedTime_v2(&mut ms, self.0, later.0)
        })?;
        Ok(ms)
    }

    pub fn wait(&self) -> Result<(), CudaError> {
        // SAFETY: live event.
        check("cuEventSynchronize", unsafe {
            sys::cuEventSynchronize(self.0)
        })
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: created by cuEventCreate, destroyed once.
        unsafe { sys::cuEventDestroy_v2(self.0) };
    }
}

/// A kernel of the loaded module.
pub(crate) struct Kernel {
    pub func: sys::CUfunction,
    pub name: &'static str,
}

// SAFETY: function handles are immutable driver objects usable from any thread.
unsafe impl Send for Kernel {}
// SAFETY: as above.
unsafe impl Sync for Kernel {}

/// Loads a CUBIN and looks up `names`; the kernels in `dynamic_smem` may use up to
/// `smem_bytes` of dynamic shared memory, and those in `clusters` (when given: sm_90 and later)
/// clusters of up to 16 blocks (8 is the portable limit).
pub(crate) fn load_module(
    image: &[u8],
    names: &[&'static str],
    dynamic_smem: &[&str],
    smem_bytes: i32,
    clusters: &[&str],
) -> Result<Vec<Kernel>, CudaError> {
    let mut m: sys::CUmodule = std::ptr::null_mut();
    // SAFETY: image is a complete CUBIN (or an emulator image), NUL-terminated by the caller.
    check("cuModuleLoadData", unsafe {
        sys::cuModuleLoadData(&mut m, image.as_ptr() as *const c_void)
    })?;
    names
        .iter()
        .map(|&name| {
            let c = CString::new(name).expect("invariant: kernel names have no NUL");
            let mut f: sys::CUfunction = std::ptr::null_mut();
            // SAFETY: m is the module just loaded; c is NUL-terminated.
            check("cuModuleGetFunction", unsafe {
                sys::cuModuleGetFunction(&mut f, m, c.as_ptr())
            })
            .map_err(|e| CudaError::Kernel(format!("kernel `{name}`: {e}")))?;
            if dynamic_smem.contains(&name) {
                // SAFETY: f is a live function handle.
                check("cuFuncSetAttribute", unsafe {
                    sys::cuFuncSetAttribute(
                        f,
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        smem_bytes,
                    )
                })?;
            }
            if clusters.contains(&name) {
                // SAFETY: f is a live function handle.
                check("cuFuncSetAttribute", unsafe {
                    sys::cuFuncSetAttribute(
                        f,
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
                        1,
                    )
                })?;
            }
            Ok(Kernel { func: f, name })
        })
        .collect()
}

/// Builds the `void*` parameter array of a launch from references to the argument values.
macro_rules! kargs {
    ($($a:expr),* $(,)?) => {
        [$( ($a) as *const _ as *mut ::std::ffi::c_void ),*]
    };
}
pub(crate) use kargs;
