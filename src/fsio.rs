//! File writes that a killed process cannot leave half done.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// What marks a temporary file of ours: `.NAME.bertcls-tmp-PID`.
const TEMP_MARK: &str = ".bertcls-tmp-";

/// "cannot {verb} PATH: what to do" for a file or folder that could not be created,
/// the advice chosen by why: a full disk (or one out of inodes, which reads the same)
/// needs space, a file where a folder of PATH belongs is named, anything else most
/// likely a folder the user may write.
pub fn cannot_create(verb: &str, path: &Path, e: std::io::Error) -> anyhow::Error {
    if let Some(file) = file_in_the_way(path) {
        return anyhow::anyhow!(
            "cannot {verb} {}: {} is a file, not a folder: move it, or write elsewhere",
            path.display(),
            file.display()
        );
    }
    let hint = create_hint(&e);
    anyhow::Error::new(e).context(format!("cannot {verb} {}: {hint}", path.display()))
}

/// A file standing where one of `dir`'s folders belongs: creating `dir` then fails with
/// the OS's "File exists" or "Not a directory", which read as a folder that exists or
/// cannot be written, naming neither that file nor what to do.
fn file_in_the_way(dir: &Path) -> Option<&Path> {
    dir.ancestors().find(|a| a.is_file())
}

/// `create_dir_all(dir)`, with an error line naming the file in the way, if any.
pub fn create_folder(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| match file_in_the_way(dir) {
        Some(file) => anyhow::anyhow!(
            "cannot create folder {}: {} is a file, not a folder: write elsewhere, or move that file",
            dir.display(),
            file.display()
        ),
        None => anyhow::Error::new(e).context(format!("cannot create folder {}", dir.display())),
    })
}

/// `create_dir_all(dir)` for the output `path` that `flag` names.
pub fn create_out_folder(flag: &str, path: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| match file_in_the_way(dir) {
        Some(file) => in_the_way(flag, path, file),
        None => anyhow::anyhow!(
            "{flag} {}: cannot create {} ({e}): pass a writable folder",
            path.display(),
            dir.display()
        ),
    })
}

fn in_the_way(flag: &str, path: &Path, file: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{flag} {}: {} is a file, not a folder: pass another {flag}",
        path.display(),
        file.display()
    )
}

fn create_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
        "the disk is full (or out of inodes): free space"
    } else {
        "check the folder is writable"
    }
}

/// Refuses, before any work, an output `path` (given as `flag`) that `atomic_write` could
/// not write: its folder is made if missing, as the write would, and a temporary file is
/// created in it and removed.
pub fn check_writable(flag: &str, path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = temp_path(dir, &name);
    let made = std::fs::create_dir_all(dir).and_then(|()| std::fs::File::create(&tmp));
    match made {
        Ok(_) => {
            let _ = std::fs::remove_file(&tmp);
            Ok(())
        }
        Err(e) => {
            if let Some(file) = file_in_the_way(dir) {
                return Err(in_the_way(flag, path, file));
            }
            let hint = create_hint(&e);
            Err(anyhow::Error::new(e).context(format!(
                "{flag} {}: cannot write in {}: {hint}",
                path.display(),
                dir.display()
            )))
        }
    }
}

/// The temporary file `atomic_write` writes `path` through in this process.
fn temp_path(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(format!(".{name}{TEMP_MARK}{}", std::process::id()))
}

/// Whether a file name is one of `atomic_write`'s temporary files.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMP_MARK)
}

/// Removes the temporary files left in `dir` by writes that were killed; returns how
/// many. Only for a folder no other process is writing (a run folder we hold the
/// lock of): a live write's temporary file would go too.
pub fn remove_stale_temp_files(dir: &Path) -> Result<usize> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if is_temp_name(&name.to_string_lossy()) && entry.path().is_file() {
            std::fs::remove_file(entry.path()).with_context(|| {
                format!(
                    "cannot remove the stale temporary file {}",
                    entry.path().display()
                )
            })?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes the temporary files of `atomic_write`s that were killed from `dir`, a folder
/// other processes may be writing (the feature cache). Returns how many.
pub fn remove_abandoned_temp_files(dir: &Path) -> usize {
    remove_unheld_files(dir, is_temp_name)
}

/// Removes the files of `dir` whose names `stale` picks and that no live process holds:
/// a live write holds the lock of its temporary, so only those whose lock can be taken
/// go. Returns how many; a file that cannot be opened, locked or removed is left, since
/// it is in no one's way.
pub fn remove_unheld_files(dir: &Path, stale: impl Fn(&str) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !stale(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        if fs4::FileExt::try_lock(&file).is_ok()
            && file.metadata().is_ok_and(|m| m.is_file())
            && std::fs::remove_file(&path).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Writes `bytes` to a temporary file beside `path` (`.NAME.bertcls-tmp-PID`), syncs
/// it, then renames it over `path`: readers see the old file or the new one, never a
/// torn one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_folder(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = temp_path(dir, &name);
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp).map_err(|e| cannot_create("write", &tmp, e))?;
        // Held until the rename is done: `remove_abandoned_temp_files` in a folder other
        // processes write (the feature cache) takes only temporaries no one holds.
        let _ = fs4::FileExt::try_lock(&f);
        f.write_all(bytes)
            .with_context(|| format!("cannot write {} (disk full?)", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("cannot sync {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Opens `path` (creating it) and takes its exclusive advisory lock without waiting:
/// `Ok(None)` while another process holds it. The lock lives as long as the file.
/// The file is never removed: unlinking a held lock file would let a later process
/// lock a new file of the same name while a waiting one locks the old.
pub fn try_lock(path: &Path) -> std::io::Result<Option<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => {
            // Who holds it, for the refusal of the next process (`lock_holder`); only
            // a help, so a failed write changes nothing.
            let _ = file
                .set_len(0)
                .and_then(|()| (&file).write_all(format!("{}\n", std::process::id()).as_bytes()));
            Ok(Some(file))
        }
        Err(fs4::TryLockError::WouldBlock) => Ok(None),
        Err(fs4::TryLockError::Error(e)) => Err(e),
    }
}

/// ` (pid N)`: the process that holds the lock file at `path`, as it wrote itself
/// there; empty when it wrote nothing (a bertcls from before this, or not yet).
/// A process stopped (Ctrl-Z) or hung holds its lock for as long as it lives, so the
/// refusal names it.
pub fn lock_holder(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .map(|pid| format!(" (pid {pid})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_not_blamed_on_the_folder() {
        let path = Path::new("out/x.parquet");
        for e in [
            std::io::Error::from_raw_os_error(28),
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        ] {
            let msg = format!("{:#}", cannot_create("write", path, e));
            assert!(
                msg.starts_with(
                    "cannot write out/x.parquet: the disk is full (or out of inodes): free space: "
                ),
                "{msg}"
            );
        }
        let e = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let msg = format!("{:#}", cannot_create("create", path, e));
        assert!(
            msg.starts_with("cannot create out/x.parquet: check the folder is writable: "),
            "{msg}"
        );
    }

    #[test]
    fn replaces_whole_file_and_leaves_no_temp() {
        let dir = crate::testdir::TestDir::new("fsio");
        let path = dir.join("a.bin");
        atomic_write(&path, b"first").unwrap();
        atomic_write(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(TEMP_MARK))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn removes_only_our_temp_files() {
        let dir = crate::testdir::TestDir::new("fsio-stale");
        for name in [
            ".last.safetensors.bertcls-tmp-99",
            "last.safetensors",
            ".hidden",
            "a.tmp-1",
        ] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        assert_eq!(remove_stale_temp_files(&dir).unwrap(), 1);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".hidden", "a.tmp-1", "last.safetensors"]);
    }
}
