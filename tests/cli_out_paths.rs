//! `--out` paths of `encode` and bulk `predict`/`encode`: the format the extension names
//! or a one-line refusal listing the accepted ones, a folder refused before any work, and
//! missing parent folders created, as `train`, `merge` and `encode` do.

mod common;

use std::path::Path;

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn model_dir() -> String {
    fixtures().join("tiny/model").display().to_string()
}

fn data_dir() -> String {
    fixtures().join("data/tiny-dsdict").display().to_string()
}

/// Bulk `predict` of the run `run` over `data` into `out`.
fn bulk_predict<'a>(run: &'a Path, data: &'a str, out: &'a Path) -> [&'a str; 7] {
    ["predict", "--run", s(run), "--data", data, "--out", s(out)]
}

#[test]
fn encode_of_texts_writes_the_format_its_out_extension_names() {
    let dir = TempDir::new("out-encode-ext");
    let model = model_dir();
    let texts = ["房间又小又暗", "快递太慢了，等了一个星期。"];
    let args = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut args = vec!["encode", "--model", &model, "--out", s(out)];
        args.extend_from_slice(extra);
        args.extend(texts);
        args.into_iter().map(String::from).collect()
    };
    let encode = |out: &Path, extra: &[&str]| bertcls_cpu(&strs(&args(out, extra)));
    // `refusal` asserts one stderr line: the refusal came before the model's "loaded" line.
    let refused = |out: &Path| refusal(&strs(&args(out, &[])));

    let jsonl = dir.join("f.jsonl");
    ok(encode(&jsonl, &["--ids"]));
    let printed = ok(bertcls_cpu(
        &[
            &["encode", "--model", &model, "--json", "--ids"][..],
            &texts,
        ]
        .concat(),
    ));
    assert_eq!(std::fs::read(&jsonl).unwrap(), printed.stdout);
    assert_eq!(std::fs::read_to_string(&jsonl).unwrap().lines().count(), 2);
    let one = dir.join("one.jsonl");
    let out = ok(bertcls_cpu(&[
        "encode",
        "--model",
        &model,
        "--out",
        s(&one),
        texts[0],
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("wrote {} (1 line)\n", s(&one))),
        "{stderr}"
    );

    let tensors = dir.join("f.safetensors");
    ok(encode(&tensors, &[]));
    assert_eq!(read_tensors(&tensors)["cls"].shape, [2, 32]);

    for name in ["f.parquet", "f.txt", "f"] {
        let out = dir.join(name);
        let line = refused(&out);
        assert!(line.contains(&format!("--out {}: ", s(&out))), "{line}");
        assert!(
            line.contains(".safetensors") && line.contains(".jsonl"),
            "{line}"
        );
        assert!(!out.exists());
    }

    let folder = dir.join("features");
    std::fs::create_dir_all(&folder).unwrap();
    let line = refused(&folder);
    assert!(line.contains("is a folder"), "{line}");
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn bulk_outs_refuse_a_folder_early_and_create_missing_parents() {
    let dir = TempDir::new("out-bulk");
    let run = train_run(&dir.0, "run", &[]);
    let data = data_dir();
    let model = model_dir();
    let folder = dir.join("taken.parquet");
    std::fs::create_dir_all(&folder).unwrap();
    for command in [["predict", "--run", s(&run)], ["encode", "--model", &model]] {
        let line = refusal(&[&command[..], &["--data", &data, "--out", s(&folder)]].concat());
        assert!(
            line.contains(&format!("--out {}: is a folder", s(&folder))),
            "{line}"
        );
    }

    let predictions = dir.join("no/such/parent/p.jsonl");
    ok(bertcls_cpu(&bulk_predict(&run, &data, &predictions)));
    assert_eq!(
        std::fs::read_to_string(&predictions)
            .unwrap()
            .lines()
            .count(),
        32
    );
    let features = dir.join("other/parent/f.parquet");
    ok(bertcls_cpu(&[
        "encode",
        "--model",
        &model,
        "--data",
        &data,
        "--out",
        s(&features),
    ]));
    assert!(features.is_file());
}

/// `encode --file` reads lines as `predict --file` does: a leading UTF-8 byte-order mark
/// is not part of the first text (it was, and came back in the JSON's "text"), and a
/// mark alone on the first line is a blank line, skipped.
#[test]
fn encode_file_drops_a_byte_order_mark() {
    let dir = TempDir::new("out-encode-bom");
    let model = model_dir();
    let texts = |content: &[u8]| -> Vec<String> {
        let file = dir.join("texts.txt");
        std::fs::write(&file, content).unwrap();
        let out = ok(bertcls_cpu(&[
            "encode",
            "--model",
            &model,
            "--json",
            "--file",
            s(&file),
        ]));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(texts(b"\xEF\xBB\xBF\xE5\xA5\xBD\r\n\nb\n"), ["好", "b"]);
    assert_eq!(texts(b"\xEF\xBB\xBF\r\nb"), ["b"]);
}

/// `encode --out` where nothing can be written (below a regular file, which stops root
/// too) is refused before the model loads, naming --out, not after every text is encoded.
#[test]
fn encode_out_that_cannot_be_written_is_refused_before_the_model_loads() {
    let dir = TempDir::new("out-encode-unwritable");
    let file = dir.join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    for name in ["f.jsonl", "sub/f.safetensors"] {
        let out = file.join(name);
        // `refusal`: one stderr line, so neither "loaded" nor the encoding's progress.
        let line = refusal(&[
            "encode",
            "--model",
            &model_dir(),
            "--out",
            s(&out),
            "a text",
        ]);
        assert_eq!(line, in_the_way("--out", &out, &file));
    }
    assert!(std::fs::read_dir(&dir.0).unwrap().count() == 1);
}

/// The refusal of an output under `file`, which stands where a folder belongs.
fn in_the_way(flag: &str, out: &Path, file: &Path) -> String {
    format!(
        "error: {flag} {}: {} is a file, not a folder: pass another {flag}",
        s(out),
        s(file)
    )
}

/// Every output under a file said "cannot write in" or "cannot create" it, with the OS's
/// "File exists" or "Not a directory" and a hint to check the folder is writable: the
/// file in the way is named instead.
#[test]
fn an_out_under_a_file_names_that_file() {
    let dir = TempDir::new("out-under-file");
    let run = train_run(&dir.0, "run", &[]);
    let file = dir.join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    let data = data_dir();
    let out = file.join("p.jsonl");
    let line = refusal(&bulk_predict(&run, &data, &out));
    assert_eq!(line, in_the_way("--out", &out, &file));
    // A file where the job's parts folder goes.
    let out = dir.join("q.jsonl");
    let parts = dir.join("q.jsonl.parts");
    std::fs::write(&parts, "not a folder").unwrap();
    let failed = bertcls_cpu(&bulk_predict(&run, &data, &out));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    let want = format!(
        "error: cannot create {}: {} is a file, not a folder: move it, or write elsewhere",
        s(&parts),
        s(&parts)
    );
    assert_eq!(stderr.lines().last(), Some(want.as_str()), "{stderr}");
    let out = file.join("deeper/run");
    let trained = bertcls_cpu(&[
        "train",
        "--model",
        &model_dir(),
        "--data",
        &data,
        "--out",
        s(&out),
    ]);
    let stderr = String::from_utf8_lossy(&trained.stderr);
    assert_eq!(
        stderr.lines().last(),
        Some(in_the_way("--out", &out, &file).as_str())
    );

    let parts: Vec<String> = (0..2)
        .map(|k| {
            let part = dir.join(format!("p{k}.jsonl"));
            let shard = format!("{k}/2");
            let args = bulk_predict(&run, &data, &part);
            ok(bertcls_cpu(&[&args[..], &["--shard", &shard]].concat()));
            s(&part).to_string()
        })
        .collect();
    let merged = file.join("m.jsonl");
    let out = merge(&[s(&merged), &parts[0], &parts[1]]);
    assert!(!out.status.success());
    let want = format!(
        "error: cannot create folder {}: {} is a file, not a folder: write elsewhere, or move that file",
        s(&file),
        s(&file)
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim_end(), want);
}
