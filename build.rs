//! Compiles `kernels/*.cu` into one fatbin that `src/backend/cuda` embeds.
//!
//! The fatbin holds SASS for sm_80 (A100) and sm_90 (H100) plus compute_80 PTX, so the
//! driver loads machine code directly on those GPUs (no JIT at start-up) and can still
//! JIT the PTX for newer ones. Without nvcc the crate builds anyway, with the
//! `bertcls_cuda_kernels` cfg unset: the CUDA backend then says how to get the kernels.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (virtual architecture, real architecture) pairs given to nvcc's `-gencode`.
const GENCODE: &[(&str, &str)] = &[
    ("compute_80", "sm_80"),
    ("compute_90", "sm_90"),
    ("compute_80", "compute_80"),
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(bertcls_cuda_kernels)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH"] {
        println!("cargo::rerun-if-env-changed={var}");
    }

    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernel_dir = manifest.join("kernels");
    let sources = kernel_sources(&kernel_dir);
    for file in fs::read_dir(&kernel_dir).into_iter().flatten().flatten() {
        println!("cargo::rerun-if-changed={}", file.path().display());
    }
    // Watching a path that does not exist would rerun this script on every build, so the
    // pip toolchain is watched once it is there; scripts/install-cuda-toolchain.sh touches
    // build.rs when it installs one.
    let pip_nvcc = manifest.join(".cuda/nvidia/cu13/bin/nvcc");
    if pip_nvcc.is_file() {
        println!("cargo::rerun-if-changed={}", pip_nvcc.display());
    }

    let found = find_nvcc(&pip_nvcc);
    // PATH changes with every shell and tool: watch it only when it is where nvcc came
    // from, or where one may yet appear.
    if found.as_ref().is_none_or(|(_, from_path)| *from_path) {
        println!("cargo::rerun-if-env-changed=PATH");
    }
    let Some((nvcc, _)) = found else {
        println!(
            "cargo::warning=nvcc not found (NVCC, CUDA_HOME, CUDA_PATH, .cuda/, PATH): building without CUDA kernels; run scripts/install-cuda-toolchain.sh and rebuild"
        );
        return;
    };
    if sources.is_empty() {
        println!("cargo::warning=no kernels/*.cu found: building without CUDA kernels");
        return;
    }

    // One translation unit that includes every kernel file: one module to load, one
    // place where a duplicate kernel name fails the build.
    let unit = out_dir.join("bertcls_kernels.cu");
    let includes: String = sources
        .iter()
        .map(|s| format!("#include \"{}\"\n", s.display()))
        .collect();
    fs::write(&unit, includes).expect("cannot write the kernel translation unit to OUT_DIR");
    let fatbin = out_dir.join("bertcls_kernels.fatbin");

    let mut cmd = Command::new(&nvcc);
    cmd.arg("--fatbin")
        .arg("-O3")
        .arg("-std=c++17")
        // No --use_fast_math: erff, expf, rsqrtf and division stay accurate, which the fp32
        // parity with the CPU backend (1e-4 on hidden states) depends on.
        .arg("-I")
        .arg(&kernel_dir);
    for (virt, real) in GENCODE {
        cmd.arg("-gencode").arg(format!("arch={virt},code={real}"));
    }
    cmd.arg("-o").arg(&fatbin).arg(&unit);
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) => fail(&format!("cannot run {}: {e}", nvcc.display())),
    };
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stdout));
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        fail(&format!(
            "nvcc failed to compile kernels/*.cu ({}); its output is above",
            output.status
        ));
    }

    let archs: Vec<&str> = GENCODE.iter().map(|(_, real)| *real).collect();
    println!("cargo::rustc-cfg=bertcls_cuda_kernels");
    println!("cargo::rustc-env=BERTCLS_CUDA_FATBIN={}", fatbin.display());
    println!("cargo::rustc-env=BERTCLS_CUDA_ARCHS={}", archs.join(" "));
    println!(
        "cargo::rustc-env=BERTCLS_NVCC_VERSION={}",
        nvcc_release(&nvcc)
    );
}

/// Fails the build with `message` and no backtrace: a kernel that does not compile is an
/// error of the crate, not of this script.
fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}

/// Every `kernels/*.cu`, sorted so the translation unit is the same on every machine.
fn kernel_sources(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    out.sort();
    out
}

/// `NVCC`, then `CUDA_HOME`/`CUDA_PATH`, then the pip toolchain of
/// `scripts/install-cuda-toolchain.sh`, then `PATH`; with whether it came from `PATH`.
fn find_nvcc(pip_nvcc: &Path) -> Option<(PathBuf, bool)> {
    if let Some(p) = env::var_os("NVCC") {
        let p = PathBuf::from(p);
        if !runs(&p) {
            fail(&format!("NVCC={} does not run", p.display()));
        }
        return Some((p, false));
    }
    let from_home = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(env::var_os)
        .map(|home| PathBuf::from(home).join("bin").join("nvcc"));
    let on_path = env::var_os("PATH")
        .map(|path| {
            env::split_paths(&path)
                .map(|d| d.join("nvcc"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let explicit = from_home.chain(std::iter::once(pip_nvcc.to_path_buf()));
    explicit
        .map(|p| (p, false))
        .chain(on_path.into_iter().map(|p| (p, true)))
        .find(|(p, _)| p.is_file() && runs(p))
}

fn runs(nvcc: &Path) -> bool {
    Command::new(nvcc)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `13.0` from nvcc's `Cuda compilation tools, release 13.0, V13.0.88`.
fn nvcc_release(nvcc: &Path) -> String {
    let out = Command::new(nvcc)
        .arg("--version")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    text.split("release ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or("unknown")
        .to_string()
}
