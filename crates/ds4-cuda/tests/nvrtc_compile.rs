//! Every kernel compiles with the real NVRTC for Hopper (sm_90) and the module defines every
//! kernel the backend launches. Needs libnvrtc only, no GPU: CI installs the pinned PyPI
//! `nvidia-cuda-nvrtc` and puts its library folder on LD_LIBRARY_PATH; without it the test
//! prints a skip line.

#[test]
fn every_kernel_compiles_with_nvrtc_for_sm_90() {
    if std::env::var_os("DS4_CUDA_EMU").is_some() {
        eprintln!("skipping: the CUDA emulator's NVRTC is loaded (DS4_CUDA_EMU)");
        return;
    }
    // SAFETY: only tries to dlopen the library by name.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        eprintln!("skipping: libnvrtc is not on the library path (pip install nvidia-cuda-nvrtc)");
        return;
    }
    std::env::set_var(
        "DS4_KERNEL_CACHE",
        std::env::temp_dir().join("ds4-nvrtc-test"),
    );
    let src = ds4_cuda::nvrtc::source();
    let t0 = std::time::Instant::now();
    let cubin = ds4_cuda::nvrtc::compile(&src, (9, 0)).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "NVRTC {:?}: {} bytes of sm_90 code in {:.1} s",
        ds4_cuda::nvrtc::version().ok(),
        cubin.len(),
        t0.elapsed().as_secs_f64()
    );
    // Every launched kernel is an entry of the module (ELF symbol names in the cubin).
    for name in ds4_cuda::nvrtc::KERNELS {
        let needle = format!("{name}\0");
        assert!(
            cubin.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "kernel `{name}` is not in the compiled module"
        );
    }
}

/// The timeline's stamps (DS4_CUDA_TIMELINE=1: a define with the buffer's address, common.cuh
/// `timeline_stamp`) compile into every kernel too.
#[test]
fn the_timeline_variant_compiles_with_nvrtc_for_sm_90() {
    if std::env::var_os("DS4_CUDA_EMU").is_some()
        // SAFETY: only tries to dlopen the library by name.
        || !unsafe { cudarc::nvrtc::sys::is_culib_present() }
    {
        eprintln!("skipping: no real libnvrtc on the library path");
        return;
    }
    std::env::set_var(
        "DS4_KERNEL_CACHE",
        std::env::temp_dir().join("ds4-nvrtc-test"),
    );
    let src = format!(
        "#define DS4_TIMELINE 0x7f0000000000ull\n#define DS4_TIMELINE_CAP 16ull\n{}",
        ds4_cuda::nvrtc::source()
    );
    let stamped = ds4_cuda::nvrtc::compile(&src, (9, 0)).unwrap_or_else(|e| panic!("{e}"));
    let plain = ds4_cuda::nvrtc::compile(&ds4_cuda::nvrtc::source(), (9, 0))
        .unwrap_or_else(|e| panic!("{e}"));
    // The stamps are code in every kernel: the module grows.
    assert!(
        stamped.len() > plain.len(),
        "{} vs {} bytes",
        stamped.len(),
        plain.len()
    );
}

/// Writes the kernel source to $DS4_DUMP_KERNEL_SOURCE (for ptxas reports).
#[test]
fn dump_source_when_asked() {
    if let Some(p) = std::env::var_os("DS4_DUMP_KERNEL_SOURCE") {
        std::fs::write(p, ds4_cuda::nvrtc::source()).expect("write source");
    }
}

/// Every kernel is launched with programmatic stream serialization, so each must wait for its
/// predecessor before it touches memory: its first statement is `grid_dep_sync()`
/// (kernels/common.cuh). A kernel without it would race with the one before it on the GPU.
#[test]
fn every_kernel_begins_with_grid_dep_sync() {
    let src = ds4_cuda::nvrtc::source();
    let mut seen = 0;
    for (at, _) in src.match_indices("extern \"C\" __global__ void ") {
        let head = &src[at..];
        let name: String = head["extern \"C\" __global__ void ".len()..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let body = &head[head.find('{').expect("kernel body") + 1..];
        // A kernel that loads constants before its wait says so first (common.cuh PRE_WAIT)
        // and waits before its body ends.
        if body.trim_start().starts_with("// Before the wait") {
            let end = body.find("\n}").unwrap_or(body.len());
            assert!(
                body[..end].contains("grid_dep_sync();"),
                "kernel `{name}` loads before its wait but never waits"
            );
            seen += 1;
            continue;
        }
        let first = body
            .trim_start_matches(|c: char| c.is_whitespace() || c == '\\')
            .split(';')
            .next()
            .unwrap_or("");
        assert_eq!(
            first.trim(),
            "grid_dep_sync()",
            "kernel `{name}` does not begin with grid_dep_sync()"
        );
        seen += 1;
    }
    // Kernels defined through macros (MV_/GU_/DN_KERNEL) count once per macro here.
    assert!(seen >= 30, "found only {seen} kernel definitions");
}

/// The fast IQ2_XXS dots compute the sign table (`ksigns` in kernels/matmul.cu: the seven
/// stored bits, and an eighth that makes the number of negative signs even) instead of
/// reading it; this is that formula against ggml's table as ds4::quant holds it.
#[test]
fn ksigns_formula_equals_the_table() {
    for (i, &t) in ds4::quant::KSIGNS_IQ2XS.iter().enumerate() {
        let i = i as u32;
        let f = i | ((i.count_ones() & 1) << 7);
        assert_eq!(f, u32::from(t), "ksigns_iq2xs[{i}]");
    }
}
