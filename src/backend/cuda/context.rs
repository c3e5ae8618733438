//! Finding a GPU without panicking, the context and stream, and the embedded kernel
//! module with every kernel looked up by name when it loads.

use std::ffi::{c_void, CString};
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use cudarc::driver::{result as drv, sys, CudaContext, CudaStream, DriverError};

/// The fatbin build.rs compiled from `kernels/*.cu`; `None` when it found no nvcc.
#[cfg(bertcls_cuda_kernels)]
const FATBIN: Option<&[u8]> = Some(include_bytes!(env!("BERTCLS_CUDA_FATBIN")));
#[cfg(not(bertcls_cuda_kernels))]
const FATBIN: Option<&[u8]> = None;

/// The GPU architectures the fatbin carries code for, e.g. `sm_80 sm_90 compute_80`.
pub const KERNEL_ARCHS: Option<&str> = option_env!("BERTCLS_CUDA_ARCHS");
/// The nvcc release that compiled the kernels.
pub const NVCC_VERSION: Option<&str> = option_env!("BERTCLS_NVCC_VERSION");

pub(crate) const NO_KERNELS: &str =
    "bertcls was built without CUDA kernels: run scripts/install-cuda-toolchain.sh and rebuild";

/// cudarc loads libcuda and libcublas on first use and panics when they are missing:
/// every path into cudarc goes through this check first.
pub(crate) fn check_libraries() -> Result<()> {
    // SAFETY: these only try to dlopen the library by its candidate names.
    if !unsafe { sys::is_culib_present() } {
        bail!("no CUDA driver on this machine (libcuda.so not found): no NVIDIA GPU is usable");
    }
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        bail!(
            "the CUDA driver is present but cuBLAS is not (libcublas.so.13 not found): install the CUDA 13 toolkit or add its lib64 folder to LD_LIBRARY_PATH"
        );
    }
    Ok(())
}

/// How many GPUs the driver reports; libraries must have been checked.
pub(crate) fn device_count() -> Result<usize> {
    let n = CudaContext::device_count().map_err(|e| {
        anyhow!("the CUDA driver failed to start ({e}): is the NVIDIA driver loaded?")
    })?;
    Ok(n.max(0) as usize)
}

/// One line per GPU: `cuda:0 NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)`.
pub(crate) fn describe_devices() -> Result<Vec<String>> {
    (0..device_count()?)
        .map(|i| {
            let dev = drv::device::get(i as i32)?;
            let name = drv::device::get_name(dev)?;
            let attr = |a| unsafe { drv::device::get_attribute(dev, a) };
            let major =
                attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
            let minor =
                attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
            let mem = unsafe { drv::device::total_mem(dev) }?;
            Ok(format!(
                "cuda:{i} {name} (sm_{major}{minor}, {:.1} GiB)",
                mem as f64 / (1u64 << 30) as f64
            ))
        })
        .collect::<Result<Vec<_>, DriverError>>()
        .map_err(|e| anyhow!("cannot query the CUDA devices: {e}"))
}

/// Checks, without creating a context, that `cuda:ordinal` can run the CUDA backend.
pub(crate) fn check_device(ordinal: usize) -> Result<()> {
    if FATBIN.is_none() {
        bail!("{NO_KERNELS}");
    }
    check_libraries()?;
    match device_count()? {
        0 => bail!("the CUDA driver reports no GPU"),
        n if ordinal >= n => bail!(
            "cuda:{ordinal} requested but the driver reports {n} GPU(s): use cuda:0..cuda:{}",
            n - 1
        ),
        _ => Ok(()),
    }
}

/// The context (bound to the calling thread) and the one stream every op runs on.
pub(crate) fn open(ordinal: usize) -> Result<(Arc<CudaContext>, Arc<CudaStream>)> {
    check_device(ordinal)?;
    let ctx = CudaContext::new(ordinal).map_err(|e| anyhow!("cannot open cuda:{ordinal}: {e}"))?;
    // SAFETY: everything runs on one stream, in order, so cudarc's per-allocation events
    // (which synchronise several streams) are pure overhead; no allocation exists yet.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx
        .new_stream()
        .map_err(|e| anyhow!("cannot create a CUDA stream: {e}"))?;
    Ok((ctx, stream))
}

/// The loaded fatbin; unloaded on drop, after every function handle (plain pointers) in
/// `Kernels` is done with.
struct Module {
    raw: sys::CUmodule,
    ctx: Arc<CudaContext>,
}

impl Drop for Module {
    fn drop(&mut self) {
        // Errors on teardown (a context already lost) have nowhere to go.
        let _ = self.ctx.bind_to_thread();
        let _ = unsafe { drv::module::unload(self.raw) };
    }
}

fn load_module(ctx: &Arc<CudaContext>) -> Result<Module> {
    let image = FATBIN.ok_or_else(|| anyhow!("{NO_KERNELS}"))?;
    // cuModuleLoadData wants the image 8-byte aligned; include_bytes! promises 1.
    let mut aligned = vec![0u64; image.len().div_ceil(8)];
    // SAFETY: `aligned` holds at least image.len() bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            image.as_ptr(),
            aligned.as_mut_ptr().cast::<u8>(),
            image.len(),
        )
    };
    ctx.bind_to_thread()
        .map_err(|e| anyhow!("cannot bind the CUDA context: {e}"))?;
    // SAFETY: a complete fatbin image produced by nvcc --fatbin.
    let raw = unsafe { drv::module::load_data(aligned.as_ptr().cast::<c_void>()) }.map_err(|e| {
        anyhow!(
            "cannot load the CUDA kernels ({e}): this GPU needs code for an architecture the build does not carry ({})",
            KERNEL_ARCHS.unwrap_or("none")
        )
    })?;
    Ok(Module {
        raw,
        ctx: ctx.clone(),
    })
}

/// A kernel of the module with the attributes the driver reports for it, read when the
/// module loads, so that every launch is checked against them before the driver sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kernel {
    pub f: sys::CUfunction,
    pub name: &'static str,
    pub limits: KernelLimits,
}

/// What bounds a kernel's launch geometry on this GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KernelLimits {
    /// Bytes of `__shared__` arrays the kernel declares.
    pub static_shared: u32,
    /// Threads per block the kernel can launch with (its register use decides).
    pub max_threads: u32,
    pub registers: u32,
    /// Shared memory one block may use without an opt-in (48 KiB on every current GPU):
    /// static and dynamic together.
    pub shared_per_block: u32,
}

impl KernelLimits {
    /// Whether `grid` fits, else why, naming `kernel`.
    pub fn check(&self, kernel: &str, grid: &Grid) -> Result<()> {
        if grid.threads > self.max_threads {
            bail!(
                "kernel {kernel}: {} threads per block exceed its limit of {} ({} registers per thread)",
                grid.threads,
                self.max_threads,
                self.registers
            );
        }
        let shared = grid.shared_bytes as u64 + self.static_shared as u64;
        if shared > self.shared_per_block as u64 {
            bail!(
                "kernel {kernel}: {} bytes of dynamic and {} of static shared memory exceed the {} a block may use: rows of {} floats are too wide for the LayerNorm kernels",
                grid.shared_bytes,
                self.static_shared,
                self.shared_per_block,
                grid.shared_bytes / 4
            );
        }
        Ok(())
    }
}

fn function(module: &Module, name: &'static str, shared_per_block: u32) -> Result<Kernel> {
    let c_name = CString::new(name).expect("kernel names have no NUL");
    // SAFETY: the module is loaded and outlives the handle (both live in `Kernels`).
    let f = unsafe { drv::module::get_function(module.raw, c_name) }
        .map_err(|e| anyhow!("the embedded CUDA module has no kernel \"{name}\" ({e}): kernels/ and src/backend/cuda disagree; rebuild"))?;
    use sys::CUfunction_attribute_enum as A;
    // SAFETY: `f` was just returned by the driver for a loaded module.
    let attr = |a| {
        unsafe { drv::function::get_function_attribute(f, a) }
            .map(|v| v.max(0) as u32)
            .map_err(|e| anyhow!("cannot query the attributes of kernel {name}: {e}"))
    };
    Ok(Kernel {
        f,
        name,
        limits: KernelLimits {
            static_shared: attr(A::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?,
            max_threads: attr(A::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
            registers: attr(A::CU_FUNC_ATTRIBUTE_NUM_REGS)?,
            shared_per_block,
        },
    })
}

/// Shared memory per block without an opt-in, as the context's device reports it.
fn shared_per_block(ctx: &Arc<CudaContext>) -> Result<u32> {
    let a = sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK;
    ctx.attribute(a)
        .map(|v| v.max(0) as u32)
        .map_err(|e| anyhow!("cannot query the GPU's shared memory per block: {e}"))
}

/// How the encoder's tensors are stored on the GPU: f32 for `--precision fp32|tf32`,
/// half for fp16 and bf16. Kernels of the encoder exist once per storage type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    F32,
    F16,
    Bf16,
}

impl Storage {
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }
}

/// One kernel in each storage type: `name` (float), `name_f16`, `name_bf16`.
pub(crate) struct Typed {
    pub f32: Kernel,
    f16: Kernel,
    bf16: Kernel,
}

impl Typed {
    pub fn get(&self, storage: Storage) -> &Kernel {
        match storage {
            Storage::F32 => &self.f32,
            Storage::F16 => &self.f16,
            Storage::Bf16 => &self.bf16,
        }
    }
}

/// Declares the kernel table: one field per kernel family of kernels/*.cu (`typed`: the
/// encoder's, in three storage types; `f32`: the head's), each looked up with its
/// attributes when the module loads, so that a missing or renamed kernel fails at
/// start-up, naming it, rather than on first use.
macro_rules! kernel_table {
    (typed: $($typed:ident),* ; f32: $($plain:ident),* $(,)?) => {
        pub(crate) struct Kernels {
            $(pub $typed: Typed,)*
            $(pub $plain: Kernel,)*
            _module: Module,
        }

        /// Every kernel the backend launches, by name.
        pub const KERNEL_NAMES: &[&str] = &[
            $(stringify!($typed), concat!(stringify!($typed), "_f16"), concat!(stringify!($typed), "_bf16"),)*
            $(stringify!($plain),)*
        ];

        impl Kernels {
            pub(crate) fn load(ctx: &Arc<CudaContext>) -> Result<Self> {
                let module = load_module(ctx)?;
                let shared = shared_per_block(ctx)?;
                Ok(Self {
                    $($typed: Typed {
                        f32: function(&module, stringify!($typed), shared)?,
                        f16: function(&module, concat!(stringify!($typed), "_f16"), shared)?,
                        bf16: function(&module, concat!(stringify!($typed), "_bf16"), shared)?,
                    },)*
                    $($plain: function(&module, stringify!($plain), shared)?,)*
                    _module: module,
                })
            }
        }
    };
}

kernel_table!(
    typed:
    embeddings_layernorm_forward,
    bias_residual_layernorm_forward,
    bias_gelu_erf_forward,
    bias_gelu_tanh_forward,
    bias_relu_forward,
    attention_gather_qkv,
    attention_softmax_scale_mask,
    attention_scatter_context,
    gather_rows,
    broadcast_bias_rows,
    mean_pool_rows;
    f32:
    softmax_cross_entropy_backward,
    bias_grad_column_sum,
    adamw_update,
);

// SAFETY: CUfunction handles are plain driver handles, valid from any thread on which
// the context is current; every launch binds the context first.
unsafe impl Send for Kernels {}
unsafe impl Sync for Kernels {}

/// A kernel argument as cuLaunchKernel reads it: a device pointer, an int or a float.
#[derive(Clone, Copy)]
pub(crate) enum Arg {
    Ptr(sys::CUdeviceptr),
    I32(i32),
    F32(f32),
}

/// Launch geometry: blocks, threads per block, dynamic shared memory bytes.
pub(crate) struct Grid {
    pub blocks: u32,
    pub threads: u32,
    pub shared_bytes: u32,
}

impl Grid {
    /// A grid-stride launch over `n` elements, 256 threads a block. The kernels index
    /// elements in 32 bits (see kernels/common.cuh), so `n` must stay below 2^31.
    pub fn elementwise(n: usize) -> Result<Self> {
        if n > i32::MAX as usize {
            bail!("an op over {n} elements exceeds the CUDA kernels' 32-bit indexing: lower --max-batch-tokens");
        }
        // Enough blocks to fill any current GPU many times over; the kernels stride.
        let blocks = n.div_ceil(256).clamp(1, 1 << 16) as u32;
        Ok(Self {
            blocks,
            threads: 256,
            shared_bytes: 0,
        })
    }

    /// One block per row, the row (`width` floats) in dynamic shared memory; whether that
    /// fits with the kernel's static shared memory is checked at launch (`KernelLimits`).
    pub fn per_row(rows: usize, width: usize) -> Result<Self> {
        let shared_bytes = u32::try_from(width * 4)
            .map_err(|_| anyhow!("rows of {width} floats are too wide for shared memory"))?;
        let threads = width.next_multiple_of(32).clamp(32, 256) as u32;
        Ok(Self {
            blocks: row_count(rows)?,
            threads,
            shared_bytes,
        })
    }

    /// One warp per row, 8 rows a block.
    pub fn warp_per_row(rows: usize) -> Result<Self> {
        row_count(rows)?;
        Ok(Self {
            blocks: rows.div_ceil(8) as u32,
            threads: 256,
            shared_bytes: 0,
        })
    }
}

/// `rows` as the row kernels take it: an `int` (and one block per row at most, within
/// gridDim.x's 2^31 - 1). Cast unchecked, 2^32 rows would make a grid of 0 blocks,
/// which `launch` skips as empty: the op would silently do nothing.
fn row_count(rows: usize) -> Result<u32> {
    if rows > i32::MAX as usize {
        bail!("an op over {rows} rows exceeds the CUDA kernels' 32-bit indexing: lower --max-batch-tokens");
    }
    Ok(rows as u32)
}

pub(crate) fn launch(stream: &CudaStream, kernel: &Kernel, grid: Grid, args: &[Arg]) -> Result<()> {
    if grid.blocks == 0 {
        return Ok(());
    }
    kernel.limits.check(kernel.name, &grid)?;
    // Every argument in an 8-byte slot: cuLaunchKernel reads sizeof(param) bytes from each
    // pointer, and on little-endian x86-64 an i32 or f32 is the low half of its slot.
    let mut slots: Vec<u64> = args
        .iter()
        .map(|a| match *a {
            Arg::Ptr(p) => p,
            Arg::I32(v) => v as u32 as u64,
            Arg::F32(v) => v.to_bits() as u64,
        })
        .collect();
    let mut params: Vec<*mut c_void> = slots.iter_mut().map(|s| (s as *mut u64).cast()).collect();
    stream
        .context()
        .bind_to_thread()
        .map_err(|e| anyhow!("cannot bind the CUDA context: {e}"))?;
    // SAFETY: the callers pass exactly the kernel's parameters, in order, and check every
    // buffer's length against the sizes the kernel is given.
    unsafe {
        drv::launch_kernel(
            kernel.f,
            (grid.blocks, 1, 1),
            (grid.threads, 1, 1),
            grid.shared_bytes,
            stream.cu_stream(),
            &mut params,
        )
    }
    .map_err(|e| anyhow!("CUDA kernel {} failed to launch: {e}", kernel.name))
}

/// What the user can lower when the GPU runs out of memory: the encoder's batches are
/// sized by --max-batch-tokens, the head trainer's by --batch-size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MemoryKnob {
    BatchTokens(usize),
    HeadBatch(usize),
}

impl std::fmt::Display for MemoryKnob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BatchTokens(n) => write!(f, "lower --max-batch-tokens (now {n})"),
            Self::HeadBatch(n) => write!(
                f,
                "lower --batch-size (now {n}), or train the head on the CPU (--head-device cpu)"
            ),
        }
    }
}

/// Maps an allocation failure to the advice the user can act on.
pub(crate) fn alloc_error(e: DriverError, floats: usize, knob: MemoryKnob) -> anyhow::Error {
    if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        anyhow!(
            "out of GPU memory allocating {} MiB: {knob}",
            (floats * 4).div_ceil(1 << 20)
        )
    } else {
        anyhow!(
            "GPU allocation of {} MiB failed: {e}",
            (floats * 4).div_ceil(1 << 20)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head trainer's memory is sized by --batch-size, not --max-batch-tokens (which
    /// it used to name, with the head's batch size as its value).
    #[test]
    fn out_of_memory_names_the_flag_that_sizes_the_allocation() {
        let oom = || DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY);
        let err = alloc_error(oom(), 3 << 20, MemoryKnob::BatchTokens(8192)).to_string();
        assert_eq!(
            err,
            "out of GPU memory allocating 12 MiB: lower --max-batch-tokens (now 8192)"
        );
        let err = alloc_error(oom(), 1, MemoryKnob::HeadBatch(32)).to_string();
        assert_eq!(
            err,
            "out of GPU memory allocating 1 MiB: lower --batch-size (now 32), or train the head on the CPU (--head-device cpu)"
        );
    }

    const LAYERNORM: KernelLimits = KernelLimits {
        static_shared: 128,
        max_threads: 1024,
        registers: 24,
        shared_per_block: 48 << 10,
    };

    #[test]
    fn a_row_fits_only_with_the_kernels_static_shared_memory() {
        // 12,288 floats fill 48 KiB of dynamic shared memory alone: the static scratch
        // (128 bytes) no longer fits beside it.
        let widest = (48 << 10) / 4 - 128 / 4;
        assert!(LAYERNORM
            .check("ln", &Grid::per_row(4, widest).unwrap())
            .is_ok());
        let e = LAYERNORM
            .check("ln", &Grid::per_row(4, widest + 1).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kernel ln") && e.contains("128 of static"),
            "{e}"
        );
    }

    #[test]
    fn row_grids_beyond_32_bits_are_refused_not_truncated() {
        // Unchecked, 2^32 rows cast to a grid of 0 blocks, which launch() skips.
        for rows in [1usize << 31, 1 << 32, (1 << 32) + 5] {
            let e = Grid::per_row(rows, 768).err().expect("refused").to_string();
            assert!(e.contains("32-bit"), "{rows}: {e}");
        }
        for rows in [1usize << 31, 1 << 35] {
            let e = Grid::warp_per_row(rows).err().expect("refused").to_string();
            assert!(e.contains("32-bit"), "{rows}: {e}");
        }
        let widest = i32::MAX as usize;
        assert_eq!(Grid::per_row(widest, 768).unwrap().blocks, i32::MAX as u32);
        assert_eq!(
            Grid::warp_per_row(widest).unwrap().blocks,
            widest.div_ceil(8) as u32
        );
    }

    #[test]
    fn threads_beyond_the_kernels_limit_are_refused() {
        let few = KernelLimits {
            max_threads: 128,
            ..LAYERNORM
        };
        let e = few
            .check("ew", &Grid::elementwise(1000).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("256 threads") && e.contains("limit of 128"),
            "{e}"
        );
    }
}
