//! The CUDA backend: cuBLAS for every GEMM, our kernels (`kernels/*.cu`, compiled into
//! one fatbin by build.rs and embedded) for the fused element-wise ops.
//!
//! cudarc is built with `dynamic-loading`: libcuda and libcublas are opened at run time,
//! so this module compiles and the binary runs where no CUDA exists. cudarc panics when a
//! library is missing, so every entry point checks for them first (`context`) and
//! returns a one-line error instead.

mod blas;
mod context;
mod head;
mod ops;

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};

pub use context::{Storage, KERNEL_ARCHS, KERNEL_NAMES, NVCC_VERSION};
pub use head::{loss_scales, CudaHead, HeadStep};
pub use ops::{CudaBackend, CudaTensor};

/// How the CUDA backend stores the encoder's tensors and computes its GEMMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// Full fp32 multiplies (`CUBLAS_DEFAULT_MATH`, TF32 off): the default, and what the
    /// parity with the CPU backend and HF transformers is stated for.
    #[default]
    Fp32,
    /// TF32 tensor cores (`CUBLAS_TF32_TENSOR_OP_MATH`): inputs rounded to a 10-bit
    /// mantissa, several times the fp32 throughput, ~1e-3 relative error per GEMM.
    Tf32,
    /// Weights and activations stored in bfloat16 (8 significant bits), GEMMs on tensor
    /// cores through cublasGemmEx with fp32 accumulation, element-wise kernels computing
    /// in fp32 (LayerNorm statistics and softmax included); [CLS] returned as f32.
    Bf16,
    /// As bf16, in IEEE half (11 significant bits, range to 65504).
    Fp16,
}

impl Precision {
    /// How tensors are stored on the GPU in this precision.
    pub fn storage(self) -> Storage {
        match self {
            Self::Fp32 | Self::Tf32 => Storage::F32,
            Self::Fp16 => Storage::F16,
            Self::Bf16 => Storage::Bf16,
        }
    }
}

impl FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fp32" => Ok(Self::Fp32),
            "tf32" => Ok(Self::Tf32),
            "bf16" => Ok(Self::Bf16),
            "fp16" => Ok(Self::Fp16),
            _ => bail!("unknown precision \"{s}\": use fp32, tf32, bf16 or fp16"),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fp32 => "fp32",
            Self::Tf32 => "tf32",
            Self::Bf16 => "bf16",
            Self::Fp16 => "fp16",
        })
    }
}

/// What `bertcls info` reports about CUDA.
#[derive(Clone, Debug)]
pub struct CudaStatus {
    /// Architectures of the embedded kernels (`sm_80 sm_90 compute_80`), `None` when built
    /// without nvcc.
    pub kernel_archs: Option<&'static str>,
    pub nvcc_version: Option<&'static str>,
    /// libcuda could be opened.
    pub driver: bool,
    /// libcublas could be opened.
    pub cublas: bool,
    /// One line per GPU the driver reports.
    pub devices: Vec<String>,
    /// Why CUDA cannot be used, when it cannot.
    pub problem: Option<String>,
}

/// Looks for the CUDA libraries and GPUs without creating a context; never panics.
pub fn probe() -> CudaStatus {
    // SAFETY: these only try to dlopen the libraries.
    let driver = unsafe { cudarc::driver::sys::is_culib_present() };
    let cublas = unsafe { cudarc::cublas::sys::is_culib_present() };
    let devices = if driver {
        context::describe_devices()
    } else {
        Ok(Vec::new())
    };
    let problem = context::check_device(0)
        .err()
        .or_else(|| devices.as_ref().err().map(|e| anyhow::anyhow!("{e}")));
    CudaStatus {
        kernel_archs: KERNEL_ARCHS,
        nvcc_version: NVCC_VERSION,
        driver,
        cublas,
        devices: devices.unwrap_or_default(),
        problem: problem.map(|e| e.to_string()),
    }
}

/// Whether `cuda:ordinal` can run the CUDA backend, and if not, why in one line.
pub fn check_device(ordinal: usize) -> Result<()> {
    context::check_device(ordinal)
}

impl fmt::Display for CudaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.kernel_archs, self.nvcc_version) {
            (Some(archs), Some(nvcc)) => {
                writeln!(f, "cuda kernels: built in for {archs} (nvcc {nvcc})")?
            }
            (Some(archs), None) => writeln!(f, "cuda kernels: built in for {archs}")?,
            _ => writeln!(
                f,
                "cuda kernels: not built in (run scripts/install-cuda-toolchain.sh and rebuild)"
            )?,
        }
        let found = |b| if b { "found" } else { "not found" };
        writeln!(
            f,
            "cuda driver: {}; cublas: {}",
            found(self.driver),
            found(self.cublas)
        )?;
        if self.devices.is_empty() {
            writeln!(f, "gpus: none")?;
        }
        for d in &self.devices {
            writeln!(f, "gpu: {d}")?;
        }
        match &self.problem {
            Some(p) => write!(f, "cuda usable: no ({p})"),
            None => write!(f, "cuda usable: yes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reports_without_panicking() {
        let status = probe();
        let text = status.to_string();
        eprintln!("{text}");
        assert!(text.starts_with("cuda kernels: "));
        assert_eq!(status.problem.is_none(), check_device(0).is_ok());
        if !status.driver {
            assert!(status.devices.is_empty() && status.problem.is_some());
        }
    }

    #[test]
    fn precision_parses() {
        assert_eq!("fp32".parse::<Precision>().unwrap(), Precision::Fp32);
        assert_eq!("tf32".parse::<Precision>().unwrap(), Precision::Tf32);
        for p in [Precision::Bf16, Precision::Fp16] {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
            assert_eq!(p.storage().bytes(), 2);
        }
        let e = "int8".parse::<Precision>().unwrap_err().to_string();
        assert!(e.contains("fp32, tf32, bf16 or fp16"), "{e}");
        assert_eq!(Precision::Tf32.to_string(), "tf32");
    }
}
