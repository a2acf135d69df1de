//! `conform cluster scheduler|executor`: the Apache DataFusion Ballista scheduler and executor
//! processes with conform's functions and plan nodes registered, so that
//! `conform run --cluster df://HOST:PORT` can send them a source's plan. They live in the one
//! `conform` binary (built with the `ballista` feature): one link of DataFusion and Ballista
//! instead of two.
//!
//! Both run in the foreground until SIGTERM or Ctrl-C and print one line when they accept
//! connections.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::extension::SessionConfigExt;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use clap::Subcommand;
use conform::cluster::{ConformCodec, function_registry, session_state};
use datafusion::prelude::SessionConfig;

/// The cluster's processes.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Start a scheduler: it plans submitted jobs into tasks and hands them to executors.
    Scheduler {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port to listen on (clients connect to df://HOST:PORT).
        #[arg(long, default_value_t = 50050)]
        port: u16,
    },
    /// Start an executor: it registers with the scheduler and runs tasks.
    Executor {
        /// The scheduler's host.
        #[arg(long, default_value = "127.0.0.1")]
        scheduler_host: String,
        /// The scheduler's port.
        #[arg(long, default_value_t = 50050)]
        scheduler_port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port for task results (Arrow Flight); the gRPC port is the next one.
        #[arg(long, default_value_t = 50051)]
        port: u16,
        /// Tasks run at once (default: the number of cores).
        #[arg(long)]
        concurrent_tasks: Option<usize>,
        /// Directory for intermediate task output (default: a temporary directory).
        #[arg(long)]
        work_dir: Option<String>,
    },
}

/// Runs a cluster process until it stops or a signal ends it; the exit code.
pub fn main(command: ClusterCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("conform cluster: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conform cluster: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: ClusterCommand) -> Result<(), String> {
    match command {
        ClusterCommand::Scheduler { host, port } => {
            let addr: SocketAddr = format!("{host}:{port}")
                .parse()
                .map_err(|e| format!("bad address {host}:{port}: {e}"))?;
            let mut config = SchedulerConfig::default()
                .with_hostname(host.clone())
                .with_port(port)
                .with_override_config_producer(Arc::new(config_producer))
                .with_override_session_builder(Arc::new(|c: SessionConfig| Ok(session_state(c))));
            config.bind_host = host.clone();
            config.override_physical_codec = Some(Arc::new(ConformCodec::default()));
            let cluster = BallistaCluster::new_from_config(&config)
                .await
                .map_err(|e| e.to_string())?;
            let server = tokio::spawn(start_server(cluster, addr, Arc::new(config)));
            // Announced from a task of its own, so that signals are handled while waiting.
            tokio::spawn(announce_when_listening(
                addr,
                "scheduler",
                format!("df://{host}:{port}"),
            ));
            tokio::select! {
                r = server => r.map_err(|e| e.to_string())?.map_err(|e| e.to_string()),
                _ = shutdown() => Ok(()),
            }
        }
        ClusterCommand::Executor {
            scheduler_host,
            scheduler_port,
            host,
            port,
            concurrent_tasks,
            work_dir,
        } => {
            let addr: SocketAddr = format!("{host}:{port}")
                .parse()
                .map_err(|e| format!("bad address {host}:{port}: {e}"))?;
            let mut config = ExecutorProcessConfig {
                bind_host: host.clone(),
                external_host: Some(host.clone()),
                port,
                grpc_port: port.checked_add(1).ok_or("--port must be below 65535")?,
                scheduler_host,
                scheduler_port,
                work_dir,
                print_thread_info: false,
                override_function_registry: Some(Arc::new(function_registry())),
                override_physical_codec: Some(Arc::new(ConformCodec::default())),
                override_config_producer: Some(Arc::new(config_producer)),
                ..Default::default()
            };
            if let Some(n) = concurrent_tasks {
                config.vcores = n.max(1);
            }
            let executor = tokio::spawn(start_executor_process(Arc::new(config)));
            tokio::spawn(announce_when_listening(
                addr,
                "executor",
                format!("{host}:{port}"),
            ));
            // The executor process handles Ctrl-C and SIGTERM itself (it tells the scheduler
            // it is leaving); a signal here ends the process if it does not.
            tokio::select! {
                r = executor => r.map_err(|e| e.to_string())?.map_err(|e| e.to_string()),
                _ = async {
                    shutdown().await;
                    tokio::time::sleep(Duration::from_secs(10)).await;
                } => Ok(()),
            }
        }
    }
}

fn config_producer() -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_ballista_physical_extension_codec(Arc::new(ConformCodec::default()))
}

/// Prints the ready line once the process accepts TCP connections on `addr`.
async fn announce_when_listening(addr: SocketAddr, what: &'static str, at: String) {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            #[allow(clippy::print_stdout)]
            {
                println!("conform cluster {what} ready on {at}");
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("conform cluster: the {what} is not accepting connections on {addr} after 60 s");
}

/// Ctrl-C or SIGTERM.
async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
