//! Tokenizer ids against HF's Python BertTokenizer: the tiny fixture's texts, and all
//! 12,000 ChnSentiCorp texts with bert-base-chinese (digests written by
//! tools/reference/make_fixtures.py; the texts themselves are read from ../shared).

mod common;

use std::collections::HashMap;
use std::path::Path;

use bertcls::data::{load, LoadOptions};
use bertcls::tokenize::BertTokenizer;
use common::*;
use sha2::{Digest, Sha256};

/// The fixture's hash of an id list: sha256 of the ids joined by "," in decimal, first 16 hex.
fn digest(ids: &[u32]) -> String {
    let joined = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let hex: String = Sha256::digest(joined.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    hex[..16].to_string()
}

#[test]
fn tiny_tokenizer_json_and_vocab_txt_match_transformers() {
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny/texts-ids.json")).unwrap(),
    )
    .unwrap();
    // model/ has tokenizer.json; model-f16-prefixed/ only vocab.txt + tokenizer_config.json.
    for dir in ["tiny/model", "tiny/model-f16-prefixed"] {
        let tok = BertTokenizer::from_dir(&fixtures().join(dir), 350).unwrap();
        for case in &cases {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = case["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let got = tok.encode(text).unwrap();
            assert_eq!(got.ids, want, "{dir}: {text:?}");
            assert!(got.type_ids.iter().all(|&t| t == 0));
        }
    }
}

#[test]
fn truncation_keeps_cls_and_sep() {
    let tok = BertTokenizer::from_dir(&fixtures().join("tiny/model"), 8).unwrap();
    let ids = tok.encode(&"好".repeat(100)).unwrap().ids;
    assert_eq!(ids.len(), 8);
    let full = BertTokenizer::from_dir(&fixtures().join("tiny/model"), 350)
        .unwrap()
        .encode(&"好".repeat(100))
        .unwrap()
        .ids;
    assert_eq!(ids[0], full[0], "[CLS] first");
    assert_eq!(ids[7], *full.last().unwrap(), "[SEP] last");
}

fn check_chnsenticorp(model: &Path, label: &str) {
    let Some(shared) = shared() else {
        skip_unless(
            false,
            "../shared is absent: the 12,000-text tokenizer check needs ChnSentiCorp",
        );
        return;
    };
    let digests =
        std::fs::read_to_string(fixtures().join("chnsenticorp-bert-base-chinese-ids.tsv")).unwrap();
    let mut want: HashMap<(String, usize), (usize, String)> = HashMap::new();
    for line in digests.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        want.insert(
            (f[0].to_string(), f[1].parse().unwrap()),
            (f[2].parse().unwrap(), f[3].to_string()),
        );
    }
    assert_eq!(want.len(), 12_000);
    let data = load(&shared.join("data/ChnSentiCorp"), &LoadOptions::default()).unwrap();
    let tok = BertTokenizer::from_dir(model, 350).unwrap();
    let mut checked = 0;
    for split in &data.splits {
        let ids = tok.encode_many(&split.texts).unwrap();
        for (row, t) in ids.iter().enumerate() {
            let (n, d) = &want[&(split.name.clone(), row)];
            assert_eq!(
                (t.ids.len(), &digest(&t.ids)),
                (*n, d),
                "{label}: {} row {row}",
                split.name
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 12_000);
}

#[test]
fn chnsenticorp_12000_texts_tokenizer_json_matches_hf_bert_tokenizer() {
    let Some(shared) = shared() else {
        skip_unless(false, "../shared is absent");
        return;
    };
    check_chnsenticorp(&shared.join("models/bert-base-chinese"), "tokenizer.json");
}

#[test]
fn chnsenticorp_12000_texts_vocab_txt_matches_hf_bert_tokenizer() {
    let Some(shared) = shared() else {
        skip_unless(false, "../shared is absent");
        return;
    };
    // The same model folder without tokenizer.json: the WordPiece rebuilt from vocab.txt.
    let dir = TempDir::new("vocab-only");
    for f in ["vocab.txt", "tokenizer_config.json", "config.json"] {
        std::fs::copy(shared.join("models/bert-base-chinese").join(f), dir.join(f)).unwrap();
    }
    check_chnsenticorp(&dir, "vocab.txt");
}
