//! `test --run`, `predict --run`, `encode --run` and `train --resume` compute in the
//! precision the run's features were computed in (run.json's "precision"): a `--precision` that contradicts
//! it is refused with one line naming run.json, one that repeats it is accepted, and a
//! precision run.json does not name leaves `--precision` in charge. A GPU run is made
//! here by writing its precision into the run.json of a CPU run: on the CPU every
//! precision computes in fp32, which the commands say in one note line.

mod common;

use std::path::Path;

use common::*;

const TEXT: &str = "房间又小又暗";

/// The run's run.json with `precision` in place of what train wrote.
fn set_precision(run: &Path, precision: &str) {
    let path = run.join("run.json");
    let mut info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    info["precision"] = precision.into();
    std::fs::write(&path, serde_json::to_string_pretty(&info).unwrap()).unwrap();
}

/// The three commands that use a run's features, on `run`, with `flags`: JSON out, and
/// nothing cached that a later case could read.
fn commands(run: &Path, flags: &[&str]) -> Vec<Vec<String>> {
    let run = run.to_str().unwrap();
    let base: [&[&str]; 3] = [
        &["test", "--run", run, "--no-cache", "--json"],
        &["predict", "--run", run, "--json", TEXT],
        &["encode", "--run", run, "--json", TEXT],
    ];
    base.iter()
        .map(|args| {
            args.iter()
                .chain(flags)
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Lines of the note that the CPU cannot compute in the run's (GPU) precision.
fn cpu_notes(stderr: &[u8]) -> usize {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.starts_with("note: the run's features were computed in "))
        .count()
}

/// Each command's output on `run` with `flags`, which must succeed; `notes` is how many
/// CPU-precision note lines each must print.
fn outputs(run: &Path, flags: &[&str], notes: usize) -> Vec<Vec<u8>> {
    commands(run, flags)
        .iter()
        .map(|args| {
            let out = ok(bertcls_cpu(&strs(args)));
            assert_eq!(cpu_notes(&out.stderr), notes, "{args:?}");
            out.stdout
        })
        .collect()
}

#[test]
fn a_precision_flag_may_repeat_the_runs_never_contradict_it() {
    let dir = TempDir::new("run-precision");
    let run = train_run(&dir.0, "run", &[]);
    // Train on the CPU records fp32: the reference outputs, without a flag.
    let fp32 = outputs(&run, &[], 0);
    for args in commands(&run, &["--precision", "bf16"]) {
        let err = refusal(&strs(&args));
        let want = format!(
            "error: --precision bf16: the run's features were made with --precision fp32 ({}); drop --precision",
            run.join("run.json").display()
        );
        assert!(err.starts_with(&want), "{args:?}: {err}");
    }

    // A run made in bf16 on a GPU: a contradicting flag is refused, fp32 included...
    set_precision(&run, "bf16");
    for args in commands(&run, &["--precision", "fp32"]) {
        let err = refusal(&strs(&args));
        assert!(
            err.contains("--precision fp32: the run's features were made with --precision bf16 (")
                && err.contains("run.json)"),
            "{args:?}: {err}"
        );
    }
    // (bulk `predict --data` loads the head's encoder the same way)
    let data = fixtures().join("data/tiny-dsdict");
    let out = dir.join("labels.jsonl");
    let err = refusal(&[
        "predict",
        "--run",
        run.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--precision",
        "fp32",
    ]);
    assert!(
        err.contains("--precision fp32: the run's features were made with --precision bf16 ("),
        "{err}"
    );
    // ... an agreeing one is accepted, as is none. The CPU computes in fp32 whatever the
    // precision, and says so once: the same binary on the same texts gives the fp32
    // outputs exactly (no tolerance).
    assert_eq!(outputs(&run, &["--precision", "bf16"], 1), fp32);
    assert_eq!(outputs(&run, &[], 1), fp32);

    // A precision run.json does not name leaves the flag in charge: nothing to agree
    // with, and no note, since the run's precision is unknown.
    set_precision(&run, "half-ish");
    assert_eq!(outputs(&run, &["--precision", "fp16"], 0), fp32);
    assert_eq!(outputs(&run, &[], 0), fp32);
}

/// Without a run, `--precision` other than fp32 on the CPU says once that it applies on a
/// GPU (train used to record fp32 without a word), and the run records what was computed.
#[test]
fn a_gpu_precision_on_the_cpu_is_noted_once() {
    let note = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.starts_with("note: --precision "))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let model = fixtures().join("tiny/model");
    let model = model.to_str().unwrap();
    for precision in ["bf16", "fp16", "tf32"] {
        let out = ok(bertcls_cpu(&[
            "encode",
            "--model",
            model,
            "--precision",
            precision,
            "--json",
            TEXT,
        ]));
        assert_eq!(
            note(&out),
            [format!(
                "note: --precision {precision} applies on a GPU; the CPU computes in fp32"
            )],
        );
    }
    let out = ok(bertcls_cpu(&[
        "encode",
        "--model",
        model,
        "--precision",
        "fp32",
        "--json",
        TEXT,
    ]));
    assert!(note(&out).is_empty());

    let dir = TempDir::new("cpu-precision-note");
    let run = train_run(&dir.0, "run", &["--precision", "bf16"]);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["precision"], "fp32");
}

/// `train --resume` continues on features of the run's precision, as `test --run` scores
/// on them: it takes run.json's precision, and refuses a `--precision` that contradicts
/// it before it touches the run (a resume on the GPU in another precision trained on
/// other features while run.json went on naming the run's).
#[test]
fn a_resume_takes_the_runs_precision_and_refuses_another() {
    let dir = TempDir::new("resume-precision");
    let run = train_run(&dir.0, "run", &[]);
    let run_str = run.to_str().unwrap();
    let epochs_done = || {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    let resume = |precision: &str| {
        refusal(&[
            "train",
            "--resume",
            run_str,
            "--epochs",
            "2",
            "--no-cache",
            "--precision",
            precision,
        ])
    };
    let err = resume("bf16");
    assert!(
        err.starts_with(&format!(
            "error: cannot resume {run_str}: --precision (run: fp32, now: bf16) differ"
        )),
        "{err}"
    );
    assert_eq!(epochs_done(), 1);

    // A run made in bf16 on a GPU: fp32 contradicts it too...
    set_precision(&run, "bf16");
    let err = resume("fp32");
    assert!(
        err.contains("--precision (run: bf16, now: fp32) differ"),
        "{err}"
    );
    assert_eq!(epochs_done(), 1);
    // ... and without the flag the resume takes bf16, which the CPU computes in fp32.
    let out = ok(bertcls_cpu(&[
        "train",
        "--resume",
        run_str,
        "--epochs",
        "2",
        "--no-cache",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("resuming with ") && l.ends_with(" --precision bf16")),
        "{stderr}"
    );
    assert!(
        stderr.contains("note: --precision bf16 applies on a GPU; the CPU computes in fp32"),
        "{stderr}"
    );
    assert_eq!(epochs_done(), 2);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["precision"], "bf16");
}
