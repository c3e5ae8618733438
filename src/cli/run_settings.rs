//! What a run's run.json records against the flags of a command that uses its head
//! (`encode --run`, `test --run`, `predict --run`).
//!
//! A flag may repeat what the run says (a script that always passes `--pooling mean`
//! keeps working) but never change it: features made otherwise are not the ones the head
//! was trained on, and nothing downstream could tell.

use std::fmt::Display;
use std::path::Path;

use anyhow::{bail, Result};

use super::common::{DeviceArgs, EncoderDevice};
use super::run_dir::RunInfo;
use crate::backend::cuda::Precision;
use crate::backend::Device;

/// The run's value of `flag`, refusing a given one that differs; `json` is the run's
/// run.json, named in the refusal.
pub fn agree<T: PartialEq + Display>(
    flag: &str,
    given: Option<T>,
    run: T,
    json: &Path,
) -> Result<T> {
    match given {
        Some(value) if value != run => bail!(
            "{flag} {value}: the run's features were made with {flag} {run} ({}); drop {flag}, with --run the run's is used",
            json.display()
        ),
        _ => Ok(run),
    }
}

/// `--device` resolved, computing in the precision the run's features were computed in
/// (`--precision` may repeat it, never change it). A run.json whose precision cannot be
/// read leaves `--precision` (or fp32) in charge.
pub fn run_device(args: &DeviceArgs, info: &RunInfo, json: &Path) -> Result<EncoderDevice> {
    let Ok(run) = info.precision.parse::<Precision>() else {
        return args.resolve();
    };
    let device = args.resolve_in(agree("--precision", args.precision, run, json)?)?;
    // The CPU backend has no half precision: it can only come near a GPU run's features.
    if device.device == Device::Cpu && run != Precision::Fp32 {
        eprintln!(
            "note: the run's features were computed in {run} on the GPU ({}); the CPU computes in fp32, so features and scores differ slightly from the run's: pass --device cuda to compute them as the run did",
            json.display()
        );
    }
    Ok(device)
}
