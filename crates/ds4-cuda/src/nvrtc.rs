//! The kernel source and its compilation: the `.cu` files of `kernels/` are embedded in the
//! binary, concatenated after the i-quant and MXFP4 tables (from `ds4::quant`, verified against
//! gguf-py) and compiled by NVRTC for the running GPU's architecture into a CUBIN, which is cached on
//! disk (`$DS4_KERNEL_CACHE`, else `~/.cache/ds4-rs/kernels`) keyed by a hash of source,
//! options and NVRTC version, so later starts skip the compile.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::path::PathBuf;

use cudarc::nvrtc::sys;

use crate::CudaError;

/// The kernel files, in dependency order.
const FILES: &[(&str, &str)] = &[
    ("common.cuh", include_str!("../kernels/common.cuh")),
    ("numerics.cu", include_str!("../kernels/numerics.cu")),
    ("matmul.cu", include_str!("../kernels/matmul.cu")),
    ("mmq.cu", include_str!("../kernels/mmq.cu")),
    ("norm_rope.cu", include_str!("../kernels/norm_rope.cu")),
    ("hc.cu", include_str!("../kernels/hc.cu")),
    ("attention.cu", include_str!("../kernels/attention.cu")),
    ("compressor.cu", include_str!("../kernels/compressor.cu")),
    ("indexer.cu", include_str!("../kernels/indexer.cu")),
    ("moe.cu", include_str!("../kernels/moe.cu")),
    ("repack.cu", include_str!("../kernels/repack.cu")),
    ("sample.cu", include_str!("../kernels/sample.cu")),
];

/// Every kernel the backend launches.
pub const KERNELS: &[&str] = &[
    "mm_f32",
    "quant_q8",
    "mv_q8_0",
    "mvp_q8_0",
    "mv_q2_k",
    "mv_q4_k",
    "mv_iq2_xxs",
    "mv_iq2c",
    "mv_f16",
    "mv_f32",
    "mv_deq",
    "mvn_q8_0",
    "mvn_f16",
    "gu_q8_0",
    "gu_q2_k",
    "gu_q4_k",
    "gu_iq2_xxs",
    "gu_iq2c",
    "gu_f16",
    "gu_f32",
    "gu_deq",
    "dn_q8_0",
    "dn_q2_k",
    "dn_q4_k",
    "dn_iq2_xxs",
    "dn_iq2c",
    "dn_f16",
    "dn_f32",
    "dn_deq",
    "deq_f16",
    "to_f16",
    "mq_q8_0",
    "mq_iq2_xxs",
    "mq_iq2c",
    "mq_q2_k",
    "mq_q4_k",
    "mq_xsum",
    "group_slots",
    "kv_round",
    "indexer_qat",
    "embed",
    "rms_norm",
    "rope",
    "head_norm_rope",
    "scale",
    "add",
    "hc_mix",
    "row_sumsq",
    "hc_pre_finish",
    "hc_post",
    "hc_step",
    "hc_step_cl",
    "hc_head_finish",
    "raw_push",
    "attn_partial",
    "attn_mma",
    "attn_combine",
    "comp_emit",
    "comp_frontier",
    "idx_scores",
    "idx_scores_rows",
    "idx_topk",
    "route",
    "argmax_next",
    "swiglu_rows",
    "gather_rows",
    "scatter_add",
    "sum_slots",
    "fill",
    "repack_q8_0",
    "repack_iq2_xxs",
    "repack_iq2c",
];

/// Kernels launched in thread-block clusters of up to 16 blocks (sm_90 and later).
pub(crate) const CLUSTER_KERNELS: &[&str] = &["hc_step_cl"];

/// Kernels whose dynamic shared memory can exceed the default 48 KiB.
pub(crate) const DYNAMIC_SMEM: &[&str] = &["idx_scores", "idx_scores_rows"];

/// The complete NVRTC source.
pub fn source() -> String {
    let grid: Vec<String> = ds4::quant::IQ2XXS_GRID
        .iter()
        .map(|v| format!("0x{v:016x}ull"))
        .collect();
    let signs: Vec<String> = ds4::quant::KSIGNS_IQ2XS
        .iter()
        .map(|v| v.to_string())
        .collect();
    let mut s = String::new();
    // DS4_CUDA_DOT_BATCH=N: the weight loads a lane of a one-row dot issues together (matmul.cu
    // DOT_BATCH, 4 by default), for A/B runs on the device.
    if let Some(n) = std::env::var("DS4_CUDA_DOT_BATCH")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| (1..=16).contains(n))
    {
        s.push_str(&format!("#define DOT_BATCH {n}\n"));
    }
    // DS4_CUDA_EXPERT_STAGES=3 (or 2, the default): the activation stages of the routed
    // experts' row dots (matmul.cu EXPERT_STAGES).
    if let Some(n) = std::env::var("DS4_CUDA_EXPERT_STAGES")
        .ok()
        .filter(|v| v == "2" || v == "3")
    {
        s.push_str(&format!("#define EXPERT_STAGES {n}\n"));
    }
    for (name, text) in FILES {
        s.push_str(&format!("// ---- {name}\n"));
        s.push_str(text);
        s.push('\n');
        if *name == "common.cuh" {
            // The IQ2_XXS tables (ggml-common.h, via ds4::quant) after the basic types, in global
            // memory: blocks copy them into shared memory with coalesced loads.
            s.push_str(&format!(
                "__device__ u64 iq2xxs_grid[256] = {{{}}};\n__device__ u8 ksigns_iq2xs[128] = {{{}}};\n",
                grid.join(","),
                signs.join(",")
            ));
            s.push_str(&tables_of_the_other_types());
        }
    }
    s
}

/// The IQ2_XS, IQ3_XXS and MXFP4 tables (`ds4::quant`, ggml's, verified against gguf-py).
fn tables_of_the_other_types() -> String {
    let join = |v: Vec<String>| v.join(",");
    format!(
        "__device__ u64 iq2xs_grid[512] = {{{}}};\n__device__ u32 iq3xxs_grid[256] = {{{}}};\n\
         __device__ i8 kvalues_mxfp4[16] = {{{}}};\n",
        join(
            ds4::quant::IQ2XS_GRID
                .iter()
                .map(|v| format!("0x{v:016x}ull"))
                .collect()
        ),
        join(
            ds4::quant::IQ3XXS_GRID
                .iter()
                .map(|v| format!("0x{v:08x}u"))
                .collect()
        ),
        join(
            ds4::quant::KVALUES_MXFP4
                .iter()
                .map(|v| v.to_string())
                .collect()
        ),
    )
}

fn nvrtc_check(call: &'static str, r: sys::nvrtcResult) -> Result<(), CudaError> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Nvrtc(format!("{call}: {r:?}")))
    }
}

/// The NVRTC version as (major, minor).
pub fn version() -> Result<(i32, i32), CudaError> {
    let (mut a, mut b) = (0, 0);
    // SAFETY: valid out-pointers.
    nvrtc_check("nvrtcVersion", unsafe { sys::nvrtcVersion(&mut a, &mut b) })?;
    Ok((a, b))
}

/// Compiles `src` for compute capability `cc` and returns the CUBIN (NUL-terminated, so the
/// emulator's text image loads the same way). The optimisation passes run on every core
/// (`--split-compile=0`: 18 s → 10–12 s for the whole source on two cores); an NVRTC that
/// refuses it compiles without it, as does `DS4_NVRTC_SPLIT=0`.
pub fn compile(src: &str, cc: (i32, i32)) -> Result<Vec<u8>, CudaError> {
    let arch = format!("--gpu-architecture=sm_{}{}", cc.0, cc.1);
    let base = [arch.as_str(), "--std=c++17"];
    let cache = cache_path(src, &base);
    if let Some(p) = &cache {
        if let Ok(bytes) = std::fs::read(p) {
            return Ok(bytes);
        }
    }
    let split = [base[0], base[1], "--split-compile=0"];
    let bin = if std::env::var("DS4_NVRTC_SPLIT").is_ok_and(|v| v == "0") {
        compile_with(src, &base)
    } else {
        compile_with(src, &split).or_else(|_| compile_with(src, &base))
    }
    .map_err(|(_, e)| e)?;
    if let Some(p) = &cache {
        // A failed cache write only costs the next start a compile.
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &bin).is_ok() {
            let _ = std::fs::rename(&tmp, p);
        }
    }
    Ok(bin)
}

/// One NVRTC compilation of `src` with `opts`: the CUBIN, or the result code and the error
/// (with the compiler's log).
fn compile_with(src: &str, opts: &[&str]) -> Result<Vec<u8>, (sys::nvrtcResult, CudaError)> {
    let fail = |r, m: String| (r, CudaError::Nvrtc(m));
    let csrc = CString::new(src).map_err(|_| {
        fail(
            sys::nvrtcResult::NVRTC_ERROR_INVALID_INPUT,
            "source has a NUL".into(),
        )
    })?;
    let name = CString::new("ds4.cu").expect("literal");
    let copts: Vec<CString> = opts
        .iter()
        .map(|o| CString::new(*o).expect("literal"))
        .collect();
    let optp: Vec<*const std::ffi::c_char> = copts.iter().map(|c| c.as_ptr()).collect();
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the program is destroyed below.
    unsafe {
        let r = sys::nvrtcCreateProgram(
            &mut prog,
            csrc.as_ptr(),
            name.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        );
        if r != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(fail(r, format!("nvrtcCreateProgram: {r:?}")));
        }
        let r = sys::nvrtcCompileProgram(prog, optp.len() as i32, optp.as_ptr());
        let result = if r != sys::nvrtcResult::NVRTC_SUCCESS {
            let mut n = 0usize;
            sys::nvrtcGetProgramLogSize(prog, &mut n);
            let mut log = vec![0 as std::ffi::c_char; n.max(1)];
            sys::nvrtcGetProgramLog(prog, log.as_mut_ptr());
            let log = CStr::from_ptr(log.as_ptr()).to_string_lossy().into_owned();
            Err(fail(
                r,
                format!("compiling the kernels failed ({r:?}):\n{log}"),
            ))
        } else {
            let mut n = 0usize;
            let r = sys::nvrtcGetCUBINSize(prog, &mut n);
            if r == sys::nvrtcResult::NVRTC_SUCCESS {
                let mut bin = vec![0u8; n + 1];
                let r = sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr() as *mut std::ffi::c_char);
                if r == sys::nvrtcResult::NVRTC_SUCCESS {
                    Ok(bin)
                } else {
                    Err(fail(r, format!("nvrtcGetCUBIN: {r:?}")))
                }
            } else {
                Err(fail(r, format!("nvrtcGetCUBINSize: {r:?}")))
            }
        };
        sys::nvrtcDestroyProgram(&mut prog);
        result
    }
}

/// 64-bit FNV-1a.
fn fnv(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h = seed;
    for p in parts {
        for &b in *p {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

fn cache_path(src: &str, opts: &[&str]) -> Option<PathBuf> {
    if std::env::var_os("DS4_CUDA_EMU").is_some() {
        return None; // the emulator caches its own builds
    }
    let dir = match std::env::var_os("DS4_KERNEL_CACHE") {
        Some(d) => PathBuf::from(d),
        None => {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            base.join("ds4-rs").join("kernels")
        }
    };
    let ver = version().ok()?;
    let v = format!("{}.{}", ver.0, ver.1);
    let o = opts.join(" ");
    let parts: [&[u8]; 3] = [src.as_bytes(), o.as_bytes(), v.as_bytes()];
    let a = fnv(0xcbf2_9ce4_8422_2325, &parts);
    let b = fnv(0x84222325_cbf29ce4, &parts);
    Some(dir.join(format!("{a:016x}{b:016x}.cubin")))
}
