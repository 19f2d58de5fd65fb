//! The `keyferry` binary: runs the command and maps each error to its exit
//! code, in one place.

use std::process::ExitCode;

fn main() -> ExitCode {
    match keyferry::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyferry: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
