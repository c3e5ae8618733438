//! A decoder panic turned into the file's one-line error.
//!
//! The parquet and arrow-ipc crates (57) unwrap and index inside their metadata and
//! schema decoders, so corrupt bytes panic there (found by tests/mutation.rs); we cannot
//! validate those bytes before the crates parse them. The panic is caught around the
//! read, its message kept off stderr (readers run on one thread: the whole-split loader,
//! and the chunked reader between encoder batches), and reported as one line naming
//! the file. Rows appended before it are discarded with the error; the chunked reader
//! guards the opening and every batch, since its decoders run lazily.

use std::panic::{catch_unwind, set_hook, take_hook, AssertUnwindSafe};
use std::path::Path;

use anyhow::{bail, Result};

pub(super) fn guarded<T>(file: &Path, what: &str, read: impl FnOnce() -> Result<T>) -> Result<T> {
    let previous = take_hook();
    set_hook(Box::new(|_| {}));
    let result = catch_unwind(AssertUnwindSafe(read));
    set_hook(previous);
    match result {
        Ok(r) => r,
        Err(_) => bail!(
            "{}: not a readable {what} (its decoder failed on corrupt bytes); re-export it",
            file.display()
        ),
    }
}
