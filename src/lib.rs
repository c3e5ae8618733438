//! bertcls: BERT text classification with a frozen encoder and a trained linear head.
//!
//! The encoder forward (`model::encoder`) is written once against the ops of
//! `backend::Backend`; `backend::cpu` is the pure-Rust reference and `backend::cuda`
//! the GPU implementation. The head (`head`, `optim`) trains on cached [CLS] or mean features.

/// `eprintln!` for every module below: std's panics when standard error cannot be
/// written (`2>` a file on a full disk, a closed pipe), which ended every command with
/// exit status 101 before it did anything. A diagnostic that cannot be shown is
/// dropped, as Unix tools drop theirs; the command's own outputs and exit status stand.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` as `eprintln!` above: a failed write to standard error is dropped.
macro_rules! eprint {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::write!(::std::io::stderr(), $($arg)*);
    }};
}

pub mod backend;
pub mod batch;
pub mod calibration;
pub mod checkpoint;
pub mod chunk;
pub mod cli;
pub mod data;
pub mod features;
pub mod fsio;
pub mod head;
pub mod hub;
pub mod le_floats;
pub mod model;
pub mod optim;
pub mod safetensors_out;
pub mod tokenize;
pub mod train;

#[cfg(test)]
mod testdir;
