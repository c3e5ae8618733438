//! `bertcls predict` streams: texts from --file or standard input are read, encoded and
//! written a chunk at a time. Checked on the tiny fixture model with inputs longer than
//! a chunk (1,024 texts), against the same texts given as arguments.

mod common;

use common::dir_with_tiny_head;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// The 32 texts of the tiny train split.
fn fixture_texts() -> Vec<String> {
    let tsv = common::fixtures().join("data/tiny-files/train.tsv");
    std::fs::read_to_string(tsv)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_once('\t').unwrap().1.to_string())
        .collect()
}

fn predict(head: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bertcls"))
        .args([
            "predict",
            "--head",
            head.to_str().unwrap(),
            "--device",
            "cpu",
        ])
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Fed from a thread: predict writes while it reads, so a test that wrote all of a
    // long input before reading would fill both pipes and wait forever.
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        // predict may stop reading early (a bad line): a broken pipe is expected then.
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

fn json_lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "predict failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Each text's prediction when the distinct texts are passed as arguments: one chunk.
fn reference(head: &Path, texts: &[String]) -> HashMap<String, Value> {
    let mut args: Vec<&str> = vec!["--json"];
    args.extend(texts.iter().map(String::as_str));
    json_lines(&predict(head, &args, b""))
        .into_iter()
        .map(|v| (v["text"].as_str().unwrap().to_string(), v))
        .collect()
}

/// The same text in another chunk is packed beside other texts: the CPU encoder's rows
/// are independent up to summation order, so probabilities agree to 1e-5, labels exactly.
fn assert_same(got: &Value, want: &Value) {
    assert_eq!(got["label_id"], want["label_id"], "{got} vs {want}");
    assert_eq!(got["label"], want["label"]);
    let (g, w) = (
        got["probs"].as_array().unwrap(),
        want["probs"].as_array().unwrap(),
    );
    for (g, w) in g.iter().zip(w) {
        let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
        assert!((g - w).abs() < 1e-5, "{got} vs {want}");
    }
}

#[test]
fn file_and_stdin_longer_than_a_chunk_are_labelled_in_order() {
    let (dir, head) = dir_with_tiny_head("stream-order");
    let texts = fixture_texts();
    let want = reference(&head, &texts);
    // 2,600 texts: two full chunks and a partial one, with blank lines between.
    let lines: Vec<&String> = texts.iter().cycle().take(2600).collect();
    let mut input = String::new();
    for (i, line) in lines.iter().enumerate() {
        input.push_str(line);
        input.push_str(if i % 100 == 0 { "\r\n\n" } else { "\n" });
    }
    let file = dir.0.join("in.txt");
    std::fs::write(&file, &input).unwrap();
    for out in [
        predict(&head, &["--json", "--file", file.to_str().unwrap()], b""),
        predict(&head, &["--json"], input.as_bytes()),
    ] {
        let got = json_lines(&out);
        assert_eq!(got.len(), lines.len());
        for (g, text) in got.iter().zip(&lines) {
            assert_eq!(g["text"].as_str().unwrap(), text.as_str());
            assert_same(g, &want[text.as_str()]);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("labelled: 2600 rows, "), "{stderr}");
    }
    // Plain output: label, probability, text.
    let out = predict(&head, &[], input.as_bytes());
    let plain = String::from_utf8(out.stdout).unwrap();
    let first = plain.lines().next().unwrap();
    let want0 = &want[lines[0].as_str()];
    let prob = want0["probs"][want0["label_id"].as_u64().unwrap() as usize]
        .as_f64()
        .unwrap();
    assert_eq!(
        first,
        format!(
            "{}\t{prob:.4}\t{}",
            want0["label"].as_str().unwrap(),
            lines[0]
        )
    );
}

#[test]
fn a_bad_line_past_the_first_chunk_is_named_after_the_chunks_before_it() {
    let (_dir, head) = dir_with_tiny_head("stream-bad");
    let mut input = "好评\n".repeat(2000).into_bytes();
    input.extend_from_slice(b"\xff\xfe\n");
    let out = predict(&head, &[], &input);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("error: standard input line 2001: text is not UTF-8"),
        "{stderr}"
    );
    // The chunk before the bad line's was written; the bad line's chunk never is.
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 1024);
}

#[test]
fn no_texts_fails_before_loading_the_model() {
    let (_dir, head) = dir_with_tiny_head("stream-empty");
    let out = predict(&head, &[], b"\n  \n");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("loaded "), "{stderr}");
    assert!(stderr.contains("error: no texts to label"), "{stderr}");
}
