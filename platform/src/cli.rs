//! How a binary ends: an error is one clear line on stderr (`error: cause: inner cause`) and
//! exit code 1. `anyhow` would print a stack backtrace from `main` whenever `RUST_BACKTRACE` is
//! set, which buries the message; backtraces stay for panics, where they help.

use std::process::ExitCode;

/// Prints `result`'s error with its chain of causes, if any, and gives the process exit code.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
