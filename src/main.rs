//! The `pigeon` binary: everything is in [`pigeon::cli`].

fn main() -> std::process::ExitCode {
    pigeon::cli::main()
}
