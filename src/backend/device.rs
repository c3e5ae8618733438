//! `--device auto|cpu|cuda[:N]`.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// The GPU when a CUDA backend finds one, else the CPU with a one-line notice.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

/// The device a command actually runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceRequest {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => bail!("unknown device \"{s}\": use auto, cpu, cuda or cuda:N"),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceRequest {
    /// The device a command runs on: `cpu` as asked; `cuda[:N]` when that GPU can run the
    /// CUDA backend, else an error saying why; `auto` the first GPU when it can, else the
    /// CPU with a one-line notice on stderr saying why not.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceRequest::Cpu => Ok(Device::Cpu),
            DeviceRequest::Cuda(n) => match super::cuda::check_device(n) {
                Ok(()) => Ok(Device::Cuda(n)),
                Err(e) => bail!("--device cuda:{n} is not available: {e}"),
            },
            DeviceRequest::Auto => match super::cuda::check_device(0) {
                Ok(()) => Ok(Device::Cuda(0)),
                Err(e) => {
                    eprintln!("note: running on the CPU ({e})");
                    Ok(Device::Cpu)
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            "auto".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Auto
        );
        assert_eq!("cpu".parse::<DeviceRequest>().unwrap(), DeviceRequest::Cpu);
        assert_eq!(
            "cuda".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Cuda(0)
        );
        assert_eq!(
            "cuda:3".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Cuda(3)
        );
        assert!("gpu".parse::<DeviceRequest>().is_err());
        assert!("cuda:x".parse::<DeviceRequest>().is_err());
    }

    #[test]
    fn cpu_and_auto_always_resolve() {
        assert_eq!(DeviceRequest::Cpu.resolve().unwrap(), Device::Cpu);
        let auto = DeviceRequest::Auto.resolve().unwrap();
        // Where CUDA is usable, auto must pick it; elsewhere the CPU.
        let usable = crate::backend::cuda::check_device(0).is_ok();
        assert_eq!(auto, if usable { Device::Cuda(0) } else { Device::Cpu });
    }

    #[test]
    fn cuda_without_a_gpu_is_a_clear_error() {
        if crate::backend::cuda::check_device(0).is_ok() {
            eprintln!("SKIPPED: this machine has a usable GPU");
            return;
        }
        let e = DeviceRequest::Cuda(0).resolve().unwrap_err().to_string();
        assert!(e.starts_with("--device cuda:0 is not available: "), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}
