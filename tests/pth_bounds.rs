//! Issue 8, item 4: the `.pth` (torch.save zip) reader never inflates more than the
//! pickle says a storage holds. The recipe head's weight storage (256 bytes) is replaced
//! by a deflated entry of 256 MiB of zeros (a 1 MB-scale zip bomb) that declares either
//! the expected 256 bytes (it lies) or its true size; both are refused in one line, and a
//! per-thread counting allocator shows the reader's peak stays under 4 MiB (inflating the
//! entry would take 256 MiB).

mod common;
#[path = "common/peak_alloc.rs"]
mod peak_alloc;

use std::io::{Read, Write};
use std::path::Path;

use common::*;
use peak_alloc::peak_during;

const BOMB: usize = 256 << 20;
const WEIGHT: &str = "recipe-head/data/0";

/// The recipe head with its weight storage replaced by `BOMB` deflated zeros, the
/// entry's declared uncompressed size then patched to `declared` in both headers.
fn bomb(path: &Path, declared: Option<u32>) {
    let src = std::fs::read(fixtures().join("recipe-head.pth")).unwrap();
    let mut zin = zip::ZipArchive::new(std::io::Cursor::new(src)).unwrap();
    let mut zout = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().to_string();
        if name == WEIGHT {
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            zout.start_file(&name, opts).unwrap();
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..BOMB >> 20 {
                zout.write_all(&zeros).unwrap();
            }
        } else {
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            zout.start_file(&name, opts).unwrap();
            zout.write_all(&data).unwrap();
        }
    }
    zout.finish().unwrap();
    let Some(size) = declared else { return };
    let mut bytes = std::fs::read(path).unwrap();
    let name = WEIGHT.as_bytes();
    let mut patched = 0;
    // Local header (size at 22, name at 30) and central directory (size at 24, name at 46).
    for (sig, size_at, name_at) in [(b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)] {
        for i in 0..bytes.len().saturating_sub(name_at + name.len()) {
            if &bytes[i..i + 4] == sig && &bytes[i + name_at..i + name_at + name.len()] == name {
                bytes[i + size_at..i + size_at + 4].copy_from_slice(&size.to_le_bytes());
                patched += 1;
            }
        }
    }
    assert_eq!(patched, 2, "both headers of {WEIGHT} patched");
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn zip_bombs_are_refused_without_inflating_them() {
    // The unmodified fixture loads (the harness is sound).
    bertcls::checkpoint::load_head(&fixtures().join("recipe-head.pth"), None).unwrap();
    for (what, declared, want) in [
        (
            "declares the 256 bytes the pickle expects",
            Some(256),
            "inflates to more bytes than the 256 it declares",
        ),
        (
            "declares its true size",
            None,
            "declares 268435456 bytes, more than the 256 it can hold",
        ),
        (
            "declares 4 GiB",
            Some(u32::MAX - 1),
            "more than the 256 it can hold",
        ),
    ] {
        let dir = TempDir::new("pth-bounds");
        let path = dir.join(format!("bomb-{}.pth", declared.unwrap_or(0)));
        bomb(&path, declared);
        let file_len = std::fs::metadata(&path).unwrap().len() as usize;
        assert!(file_len < 2 << 20, "the bomb is small: {file_len} bytes");
        let (result, peak) = peak_during(|| bertcls::checkpoint::load_head(&path, None));
        let err = format!(
            "{:#}",
            result.err().unwrap_or_else(|| panic!("{what}: loaded"))
        );
        assert!(err.contains(want) && !err.contains('\n'), "{what}: {err}");
        // The file itself is read whole; beyond it, the reader may use 4 MiB.
        assert!(
            peak < file_len + (4 << 20),
            "{what}: peak {peak} bytes for a {file_len}-byte file"
        );
        eprintln!(
            "{what}: refused, peak {} KiB for a {} KiB file: {err}",
            peak >> 10,
            file_len >> 10
        );
    }
}
