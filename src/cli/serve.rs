//! `sonde server`: logging, the async runtime, signals, and the server itself. SIGINT and SIGTERM
//! stop it gracefully; SIGHUP re-reads `--tokens-file`.

use std::process::ExitCode;

use crate::server::{LogFormat, Server, ServerConfig};

/// Runs the server until SIGINT or SIGTERM.
pub(super) fn run(config: ServerConfig) -> ExitCode {
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let server = Server::bind(config).await?;
    // Listen for SIGHUP before saying where we listen: from then on a script may send it, and
    // its default action would end the process.
    let mut hangups = hangup_signals();
    // Machine-readable lines on stdout (tests and scripts read the ports from them, which matters
    // with --grpc-port 0 / --http-port 0); everything else goes to the log on stderr.
    println!("grpc listening on {}", server.grpc_addr());
    println!("http listening on {}", server.http_addr());
    let running = server.spawn();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            () = hangups.next() => match running.reload_tokens() {
                Ok(count) => tracing::info!(tokens = count, "SIGHUP: API tokens reloaded"),
                Err(err) => tracing::error!(
                    "SIGHUP: the API tokens in force stay, because the reload failed: {err}"
                ),
            },
        }
    }
    running.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUPs, one `next()` each (never completes where there are none).
struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

fn hangup_signals() -> Hangups {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(s) => Hangups { signal: Some(s) },
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGHUP: the tokens file will not reload");
                Hangups { signal: None }
            }
        }
    }
    #[cfg(not(unix))]
    Hangups {}
}

impl Hangups {
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.signal
            && s.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT: shutting down"),
        _ = term => tracing::info!("SIGTERM: shutting down"),
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("SONDE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
