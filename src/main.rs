//! The `keyferry` binary: runs the command and maps each error to its exit
//! code, in one place.

use std::process::ExitCode;

fn main() -> ExitCode {
    match keyferry::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Messages carry server replies, file names and other text
            // from outside: escaped like every other line keyferry prints.
            eprintln!("keyferry: {}", keyferry::fmt::printable(&e.to_string()));
            ExitCode::from(e.exit_code())
        }
    }
}
