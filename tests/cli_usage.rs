//! A bad flag is one line with exit status 2, like every other error; help still prints
//! whole.

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
    let cases: [(&[&str], &str); 4] = [
        (&["train", "--lr", "NaN"], "--lr"),
        (&["train", "--lr", "-0.001"], "--lr"),
        (&["train", "--frobnicate"], "--frobnicate"),
        (&["merge"], "<OUT>"),
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

#[test]
fn help_and_version_print_whole() {
    let (code, stdout, _) = bertcls(&["train", "--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("--lr") && stdout.lines().count() > 10);
    let (code, stdout, _) = bertcls(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("bertcls "));
}
