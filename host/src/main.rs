//! The `sandpiper` binary: see the crate docs and `sandpiper --help`.

fn main() -> std::process::ExitCode {
    sandpiper::cli::main()
}
