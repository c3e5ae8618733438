//! A bad flag is one line with exit status 2, like every other error; help still prints
//! whole.

use std::path::Path;
use std::process::Command;

fn bertcls(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bertcls"))
        .args(args)
        .output()
        .expect("run bertcls");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_are_one_line_naming_the_flag() {
    let cases: [(&[&str], &str); 10] = [
        (&["train", "--lr", "NaN"], "--lr"),
        (&["train", "--lr", "-0.001"], "--lr"),
        (&["train", "--frobnicate"], "--frobnicate"),
        (&["merge"], "<OUT>"),
        // A negative count is a bad value of its flag, not an unknown flag "-1" (whose
        // tip, `-- -1`, would have made it a text to encode).
        (&["train", "--seed", "-1"], "'-1' for '--seed <SEED>'"),
        // Exponents too: clap's own negative-number test takes -1e-3 for flags -1, -e...
        (&["train", "--lr", "-1e-3"], "'-1e-3' for '--lr <LR>'"),
        (
            &["train", "--weight-decay", "-1e-2"],
            "'-1e-2' for '--weight-decay <WEIGHT_DECAY>'",
        ),
        (
            &["encode", "--stride", "-1", "a"],
            "'-1' for '--stride <STRIDE>'",
        ),
        (
            &["predict", "--run", "r", "--max-length", "-1", "a"],
            "'-1' for '--max-length",
        ),
        (
            &["encode", "--threads", "-2", "a"],
            "'-2' for '--threads <THREADS>'",
        ),
    ];
    for (args, names) in cases {
        let (code, stdout, stderr) = bertcls(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?} wrote to stdout: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains(names),
            "{args:?} does not name {names}: {stderr}"
        );
    }
}

/// `--checkpoint` picks a checkpoint of `--run`; beside `--head FILE` it meant nothing
/// and was ignored without a word (these commands succeeded without it refused).
#[test]
fn checkpoint_with_head_is_refused() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (head, model, data) = (
        fixtures.join("recipe-head.safetensors"),
        fixtures.join("tiny/model"),
        fixtures.join("data/tiny-dsdict"),
    );
    let shared = [
        "--head",
        head.to_str().unwrap(),
        "--checkpoint",
        "last",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    let data = ["--data", data.to_str().unwrap(), "--no-cache"];
    for (command, rest) in [("predict", &["好"][..]), ("test", &data[..])] {
        let args = [&[command][..], &shared[..], rest].concat();
        let (code, stdout, stderr) = bertcls(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: the argument ")
                && stderr.contains("cannot be used with")
                && stderr.contains("'--checkpoint <CHECKPOINT>'")
                && stderr.contains("'--head <HEAD>'"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn help_and_version_print_whole() {
    let (code, stdout, _) = bertcls(&["train", "--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("--lr") && stdout.lines().count() > 10);
    // `train --split test` trains on test: the splits read are the flags', not fixed ones.
    assert!(
        stdout.contains("Only the splits --split and --validation-split name are read"),
        "{stdout}"
    );
    // The tensor encode writes is named after the pooling, as wide as it makes it.
    let (code, stdout, _) = bertcls(&["encode", "--help"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("named after the pooling") && !stdout.contains("[N, hidden]"),
        "{stdout}"
    );
    // The bulk flags are shared; encode has no head and scores nothing, so its help must
    // not promise a label read against one.
    let label_column = stdout
        .split("--label-column")
        .nth(1)
        .and_then(|rest| rest.split("\n      --").next())
        .unwrap_or_default();
    assert!(
        label_column.contains("encode does not read it"),
        "{label_column}"
    );
    let (code, stdout, _) = bertcls(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("bertcls "));
}
