//! A decoder panic turned into the file's one-line error.
//!
//! The parquet and arrow-ipc crates (57) unwrap and index inside their metadata and
//! schema decoders, so corrupt bytes panic there (found by tests/mutation.rs); we cannot
//! validate those bytes before the crates parse them. The panic is caught around the
//! read and reported as one line naming the file. Rows appended before it are discarded
//! with the error; the chunked reader guards the opening and every batch, since its
//! decoders run lazily.
//!
//! The panic's own message is kept off stderr by a hook installed once for the process:
//! it is silent on a thread inside a guarded read and hands every other panic to the
//! hook it replaced, so a panic elsewhere (an encoder thread, say) still prints while a
//! read is guarded.

use std::cell::Cell;
use std::panic::{catch_unwind, set_hook, take_hook, AssertUnwindSafe};
use std::path::Path;
use std::sync::Once;

use anyhow::{bail, Result};

thread_local! {
    /// True while this thread runs a guarded read.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

pub(super) fn guarded<T>(file: &Path, what: &str, read: impl FnOnce() -> Result<T>) -> Result<T> {
    guarded_then(file, what, "re-export it", read)
}

/// [`guarded`] with the error's advice `remedy` (what to do about the file): bulk
/// outputs read back are not re-exported but written again.
pub(crate) fn guarded_then<T>(
    file: &Path,
    what: &str,
    remedy: &str,
    read: impl FnOnce() -> Result<T>,
) -> Result<T> {
    static QUIET_HOOK: Once = Once::new();
    QUIET_HOOK.call_once(wrap_current_hook);
    let outer = GUARDED.replace(true);
    let result = catch_unwind(AssertUnwindSafe(read));
    GUARDED.set(outer);
    match result {
        Ok(r) => r,
        Err(_) => bail!(
            "{}: not a readable {what} (its decoder failed on corrupt bytes); {remedy}",
            file.display()
        ),
    }
}

/// `batches` with every `next` run under [`guarded_then`]: the decoders run lazily, so
/// a batch panics as readily as the opening. After a panic it ends, as a decoder that
/// panicked is in no state to be asked again.
pub(crate) fn guarded_batches<T>(
    file: &Path,
    what: &'static str,
    remedy: &'static str,
    mut batches: impl Iterator<Item = Result<T>>,
) -> impl Iterator<Item = Result<T>> {
    let file = file.to_path_buf();
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed {
            return None;
        }
        guarded_then(&file, what, remedy, || Ok(batches.next())).unwrap_or_else(|e| {
            failed = true;
            Some(Err(e))
        })
    })
}

/// Replaces the panic hook with one that is silent inside a guarded read and defers to
/// the current hook everywhere else.
fn wrap_current_hook() {
    let previous = take_hook();
    set_hook(Box::new(move |info| {
        if !GUARDED.get() {
            previous(info);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Panics whose message carries this marker are counted by the test's hook; other
    /// tests' panics pass through to the default hook.
    const MARKER: &str = "guard-test-marker";
    static MARKED: AtomicUsize = AtomicUsize::new(0);

    fn marked(info: &std::panic::PanicHookInfo) -> bool {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied());
        text.is_some_and(|t| t.contains(MARKER))
    }

    /// A guarded panic becomes the file's error and never reaches the hook; a panic on
    /// another thread during the guarded read (and on this thread after it) still does.
    /// The counting hook is installed and then wrapped here, whatever other tests did
    /// first, so the assertions see exactly the hook chain the guard builds.
    #[test]
    fn guarded_panics_are_quiet_and_other_panics_are_not() {
        let default = take_hook();
        set_hook(Box::new(move |info| {
            if marked(info) {
                MARKED.fetch_add(1, Ordering::SeqCst);
            } else {
                default(info);
            }
        }));
        wrap_current_hook();

        let file = Path::new("broken.parquet");
        let err = guarded(file, "parquet file", || -> Result<()> {
            panic!("{MARKER}: decoder");
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "broken.parquet: not a readable parquet file (its decoder failed on corrupt \
             bytes); re-export it"
        );
        assert_eq!(
            MARKED.load(Ordering::SeqCst),
            0,
            "the guarded panic printed"
        );

        let other = guarded(file, "parquet file", || {
            Ok(std::thread::spawn(|| panic!("{MARKER}: elsewhere")).join())
        })
        .unwrap();
        assert!(other.is_err(), "the other thread did not panic");
        assert_eq!(
            MARKED.load(Ordering::SeqCst),
            1,
            "another thread's panic was silenced"
        );

        assert!(catch_unwind(|| panic!("{MARKER}: after")).is_err());
        assert_eq!(
            MARKED.load(Ordering::SeqCst),
            2,
            "a panic after the read was silenced"
        );
        assert!(guarded(file, "parquet file", || Ok(7)).unwrap() == 7);
    }
}
