//! The `herd` command line: parse, set up logging, call into the library.

mod cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cli::main().await
}
