use std::io::Write as _;
use std::process::ExitCode;

use clap::error::ErrorKind;

fn main() -> ExitCode {
    // Rust starts with SIGPIPE ignored, so a write to a closed pipe (`predict | head -1`)
    // failed as "error: Broken pipe", and println!/eprintln! panicked on it. Ended by the
    // signal, as Unix filters are, the command stops quietly; whatever it was writing to a
    // file is written atomically or resumable, as for any other kill.
    #[cfg(unix)]
    // SAFETY: nothing else runs yet, and SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match bertcls::cli::Cli::try_parse_noting_flags() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match bertcls::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined, as "what failed: why: what to do".
            // Standard error that cannot be written (a full disk) must not turn the
            // failure into a panic.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version print as clap writes them; a bad flag is one line, like every other
/// error of ours, with clap's own wording and exit status 2. clap spreads some errors over
/// several lines (the missing arguments under their heading) before its usage block.
fn usage_error(e: clap::Error) -> ExitCode {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.to_string();
    let message: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let _ = writeln!(std::io::stderr(), "{} (see --help)", message.join(" "));
    ExitCode::from(2)
}
