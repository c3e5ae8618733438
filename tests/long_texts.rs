//! Issue 8, item 5: a long text's ids equal HF's (tokenize the whole text, truncate) for
//! texts of 10^2 to 10^7 characters, while the work stays bounded by `max_length`.
//! `encode_unbounded` is the reference: the whole text through the `tokenizers` pipeline,
//! then truncated, which is what HF's tokenizers do. Ids must be equal exactly (no
//! tolerance: they are integers). The bound is checked with a per-thread counting
//! allocator: a 10^7-character text may not make `encode` allocate more than 64 MiB at
//! its peak (the whole-text pipeline takes gigabytes).

mod common;
#[path = "common/peak_alloc.rs"]
mod peak_alloc;

use std::path::{Path, PathBuf};

use bertcls::tokenize::BertTokenizer;
use common::*;
use peak_alloc::peak_during;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, Debug)]
enum Style {
    Chinese,
    English,
    Mixed,
    LatinRun,
    CjkRun,
}

const STYLES: [Style; 5] = [
    Style::Chinese,
    Style::English,
    Style::Mixed,
    Style::LatinRun,
    Style::CjkRun,
];

fn cjk(rng: &mut StdRng) -> char {
    char::from_u32(rng.random_range(0x4E00..0x9FA5)).unwrap()
}

fn word(rng: &mut StdRng) -> String {
    let n = rng.random_range(1..12);
    (0..n)
        .map(|_| {
            let c = rng.random_range(b'a'..=b'z') as char;
            if rng.random_bool(0.1) {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// Pieces that stress the cuts: accents and lone marks, added tokens, odd whitespace,
/// controls, full-width and compatibility characters, emoji, long unbroken words.
const ODD: &[&str] = &[
    "é", "e\u{301}", "\u{301}", "[CLS]", "[SEP]", "<mask>", "<s>", "</s>", "\u{a0}", "\u{3000}",
    "\u{b}", "\u{200b}", "Ａ", "㍻", "😀", "👍🏽", "🇫🇷", "İ", "ß", "กิ", "\r\n", "\t", "  ", "，",
    "。", "!", "...", "1234", "ｶﾞ",
];

fn text(style: Style, chars: usize, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut s = String::new();
    let mut counted = 0;
    while counted < chars {
        // Count what the last round appended.
        let before = s.len();
        match style {
            Style::Chinese => {
                s.push(cjk(&mut rng));
                if rng.random_bool(0.05) {
                    s.push(if rng.random_bool(0.5) { '，' } else { '。' });
                }
            }
            Style::English => {
                s.push_str(&word(&mut rng));
                if rng.random_bool(0.1) {
                    s.push(',');
                }
                s.push(' ');
            }
            Style::Mixed => match rng.random_range(0..6) {
                0 | 1 => s.push(cjk(&mut rng)),
                2 | 3 => {
                    s.push_str(&word(&mut rng));
                    s.push(' ');
                }
                4 => s.push_str(ODD[rng.random_range(0..ODD.len())]),
                _ => {
                    // A word near WordPiece's 100-character limit.
                    let n = rng.random_range(90..110);
                    s.extend((0..n).map(|i| (b'a' + (i % 26) as u8) as char));
                    s.push(' ');
                }
            },
            Style::LatinRun => s.push_str(&word(&mut rng)),
            Style::CjkRun => s.push(cjk(&mut rng)),
        }
        counted += s[before..].chars().count();
    }
    // Cut at exactly `chars` characters.
    match s.char_indices().nth(chars) {
        Some((i, _)) => s[..i].to_string(),
        None => s,
    }
}

/// The tokenizers of both kinds we support, each skipped with its reason when absent.
fn tokenizers(max_length: usize) -> Vec<(String, BertTokenizer)> {
    let mut dirs: Vec<(String, PathBuf)> = vec![
        ("tiny tokenizer.json".into(), fixtures().join("tiny/model")),
        (
            "tiny vocab.txt".into(),
            fixtures().join("tiny/model-f16-prefixed"),
        ),
    ];
    // Held until the tokenizers are built, then removed.
    let mut copies = Vec::new();
    match shared() {
        Some(shared) => {
            let chinese = shared.join("models/bert-base-chinese");
            dirs.push(("bert-base-chinese tokenizer.json".into(), chinese.clone()));
            let copy = vocab_only_copy(&chinese);
            dirs.push(("bert-base-chinese vocab.txt".into(), copy.to_path_buf()));
            copies.push(copy);
        }
        None => eprintln!("SKIPPED: bert-base-chinese: ../shared is absent"),
    }
    for (name, dir) in [
        ("all-MiniLM-L6-v2", "models/all-MiniLM-L6-v2"),
        (
            "multilingual-e5-small (Unigram)",
            "models/multilingual-e5-small",
        ),
    ] {
        let dir = repo().join(dir);
        if !skip_unless(
            dir.join("tokenizer.json").is_file(),
            &format!("{name}: {} is absent", dir.display()),
        ) {
            dirs.push((name.into(), dir));
        }
    }
    dirs.into_iter()
        .map(|(name, dir)| {
            let tok =
                BertTokenizer::from_dir(&dir, max_length).unwrap_or_else(|e| panic!("{name}: {e}"));
            // Else every comparison below would be the whole-text pipeline against itself.
            assert!(
                tok.bounds_long_texts(),
                "{name}: long texts tokenized whole"
            );
            (name, tok)
        })
        .collect()
}

/// A folder with only `vocab.txt` + `tokenizer_config.json`, so `from_dir` builds WordPiece.
fn vocab_only_copy(dir: &Path) -> TempDir {
    let out = TempDir::new("long-texts");
    for f in ["vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(dir.join(f), out.join(f)).unwrap();
    }
    out
}

fn check(name: &str, tok: &BertTokenizer, text: &str, what: &str) {
    let got = tok.encode(text).unwrap();
    let want = tok.encode_unbounded(text).unwrap();
    assert_eq!(
        got,
        want,
        "{name}, {what}: bounded ids differ from the whole text's (first difference at {:?})",
        got.ids.iter().zip(&want.ids).position(|(a, b)| a != b)
    );
}

#[test]
fn every_style_from_1e2_to_1e5_characters_matches_whole_text_truncation() {
    for (name, tok) in tokenizers(350) {
        for style in STYLES {
            for exp in 2..=5 {
                let t = text(style, 10usize.pow(exp), exp as u64);
                check(&name, &tok, &t, &format!("{style:?} 10^{exp} chars"));
            }
        }
        eprintln!("{name}: 5 styles x 10^2..10^5 characters equal");
    }
}

/// Random styles, lengths around the point where the bounded path starts, and several
/// `max_length`s: the cases most likely to meet a cut in a bad place.
#[test]
fn random_texts_near_the_bound_match() {
    let mut cases = 0;
    for max_length in [8, 64, 350] {
        for (name, tok) in tokenizers(max_length) {
            let mut rng = StdRng::seed_from_u64(max_length as u64);
            for case in 0..60 {
                let style = STYLES[rng.random_range(0..STYLES.len())];
                let chars = rng.random_range(1_000..40_000);
                let t = text(style, chars, case);
                check(
                    &name,
                    &tok,
                    &t,
                    &format!("max_length {max_length}, case {case}: {style:?}, {chars} chars"),
                );
                cases += 1;
            }
        }
    }
    eprintln!("{cases} random texts equal");
}

/// 10^6 and 10^7 characters: equal ids, and `encode` stays within 64 MiB of allocation.
/// The unbroken run each kind finds hardest (one huge word for WordPiece, a lattice with
/// no space for Unigram) at both lengths, the mixed text at 10^6 (the whole-text
/// reference costs seconds and gigabytes, so CI runs only these).
#[test]
fn million_and_ten_million_characters_match_within_bounded_memory() {
    for (name, tok) in tokenizers(350) {
        let run = if name.contains("Unigram") {
            Style::CjkRun
        } else {
            Style::LatinRun
        };
        for (style, chars) in [
            (Style::Mixed, 1_000_000),
            (run, 1_000_000),
            (run, 10_000_000),
        ] {
            let t = text(style, chars, 7);
            let (got, peak) = peak_during(|| tok.encode(&t).unwrap());
            assert!(
                peak < 64 << 20,
                "{name}, {style:?}: encode allocated {peak} bytes at its peak for 350 ids"
            );
            let want = tok.encode_unbounded(&t).unwrap();
            assert_eq!(got, want, "{name}, {style:?} {chars} chars");
            eprintln!(
                "{name}, {style:?} {chars} chars: equal, encode peak {} KiB",
                peak >> 10
            );
        }
    }
}
