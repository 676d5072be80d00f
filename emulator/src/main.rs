//! `freshet-qdrant-emulator`: test support for freshet — an emulator of Qdrant's gRPC API
//! (the part freshet uses) on the embedded Qdrant engine `qdrant-edge`. It is not a Qdrant
//! server. This file owns the command line, startup (open the data directory, bind, print
//! `listening on ADDR`), serving the gRPC services behind the API-key check, and the clean stop on
//! SIGTERM/SIGINT.

mod auth;
mod collection;
mod convert;
mod error;
mod filter;
mod optimizer;
mod service;
mod store;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use qdrant_client::qdrant::collections_server::CollectionsServer;
use qdrant_client::qdrant::points_server::PointsServer;
use qdrant_client::qdrant::qdrant_server::QdrantServer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::auth::ApiKeyCheck;
use crate::service::{CollectionsService, HealthService, PointsService};
use crate::store::Store;

/// Largest request the emulator accepts (Qdrant's default gRPC limit is 32 MiB; large
/// upsert batches should not fail here when they would not fail against Qdrant).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// An emulator of Qdrant's gRPC API for freshet's tests (not a Qdrant server).
#[derive(Debug, Parser)]
#[command(name = "freshet-qdrant-emulator", version, about)]
struct Args {
    /// Address to serve gRPC on; port 0 picks a free port (printed as `listening on ADDR`).
    #[arg(long, default_value = "127.0.0.1:6334")]
    listen: SocketAddr,
    /// Directory holding the collections and aliases (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Require every request to carry the API key found in this environment variable.
    #[arg(long)]
    api_key_env: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_env_filter(log_filter()).with_writer(std::io::stderr).init();
    let args = Args::parse();
    collection::install_flush_panic_filter();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the emulator's runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("the emulator failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The log filter: `RUST_LOG` (default: `info` for the emulator, `warn` for the engine),
/// minus two warnings qdrant-edge 0.7.1 logs on every start because an embedding program
/// cannot initialise its globals (its feature flags and mmap support check are private).
fn log_filter() -> EnvFilter {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,qdrant_edge=warn"));
    ["qdrant_edge::common::flags=error", "qdrant_edge::common::mmap::ops=error"]
        .into_iter()
        .filter_map(|directive| directive.parse().ok())
        .fold(filter, EnvFilter::add_directive)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let api_key = match &args.api_key_env {
        None => None,
        Some(var) => {
            let key = std::env::var(var).with_context(|| format!("--api-key-env {var}: the variable is not set"))?;
            anyhow::ensure!(!key.is_empty(), "--api-key-env {var}: the variable is empty");
            Some(key)
        }
    };
    let data_dir = args.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data_dir))
        .await
        .context("opening the data directory")?
        .with_context(|| format!("opening the data directory {}", args.data_dir.display()))?;
    let store = Arc::new(store);

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("cannot read the bound address")?;

    let check = ApiKeyCheck::new(api_key);
    let health = InterceptedService::new(QdrantServer::new(HealthService), check.clone());
    let collections = InterceptedService::new(
        CollectionsServer::new(CollectionsService::new(store.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        check.clone(),
    );
    let points = InterceptedService::new(
        PointsServer::new(PointsService::new(store.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        check,
    );
    let optimizer = optimizer::spawn(store.clone());

    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {addr}").and_then(|()| stdout.flush()).context("writing to stdout")?;
    }
    info!(%addr, data_dir = %args.data_dir.display(), api_key = args.api_key_env.is_some(), "freshet Qdrant emulator serving");

    let served = Server::builder()
        .add_service(health)
        .add_service(collections)
        .add_service(points)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown_signal())
        .await;
    optimizer.abort();
    store.close().await;
    served.context("serving gRPC")?;
    info!("freshet Qdrant emulator stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!("cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    info!("stopping (signal received)");
}
