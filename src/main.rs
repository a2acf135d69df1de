//! The `conform` binary: parse flags, run the command, map the outcome to an exit code.

#![allow(clippy::print_stdout)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli::init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("conform: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            r = cli::execute(cli) => r,
            _ = tokio::signal::ctrl_c() => Err(conform::Error::Interrupted),
        }
    });
    // Dropping the runtime drops unfinished sinks, which removes their temporary files.
    drop(runtime);
    match result {
        Ok(code) => ExitCode::from(code),
        Err(conform::Error::Interrupted) => {
            eprintln!("conform: interrupted; no partial output was left under a final name");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("conform: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
