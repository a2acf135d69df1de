//! The `conform` binary: parse flags, run the command, map the outcome to an exit code.

#![allow(clippy::print_stdout)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli::init_logging(&cli);
    // Cluster processes run until stopped and handle their signals themselves.
    #[cfg(feature = "ballista")]
    if let cli::Command::Cluster { command } = cli.command {
        return cli::cluster::main(command);
    }
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
        // The handlers are installed before any work starts: a signal that arrives while the
        // first source is being read must still end the run cleanly.
        let interrupted = interrupt_signal();
        // A server stops itself on the signal: it finishes the request in hand and exits 0.
        if cli::serves(&cli) {
            return cli::execute(cli, Some(Box::pin(interrupted))).await;
        }
        tokio::select! {
            r = cli::execute(cli, None) => r,
            _ = interrupted => {
                conform::stop_requested();
                Err(conform::Error::Interrupted)
            }
        }
    });
    // Dropping the runtime drops unfinished sinks, which removes their temporary files.
    if matches!(result, Err(conform::Error::Interrupted)) {
        // After a signal, threads still blocked in a request or a retry's sleep find the
        // runtime gone, which tokio reports as a panic while they unwind (dropping their
        // sinks). The user asked to stop: that is expected, not news. Async work is cancelled
        // at once; blocked threads get a moment to unwind before the process exits.
        std::panic::set_hook(Box::new(|_| {}));
        runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    } else {
        drop(runtime);
    }
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

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. Installed eagerly, unlike `tokio::signal::ctrl_c`,
/// which listens only once it is first polled.
#[cfg(unix)]
fn interrupt_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        match (int, term) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            // Without handlers the default action (ending the process) applies.
            _ => std::future::pending().await,
        }
    }
}

#[cfg(not(unix))]
fn interrupt_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
