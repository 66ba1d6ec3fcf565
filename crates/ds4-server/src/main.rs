//! `ds4-server` binary: parse flags, install logging, serve (spec/serving.md §6.2).
#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    let args = ds4_server::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ds4-server: error: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(ds4_server::run(args)) {
        eprintln!("ds4-server: error: {e:#}");
        std::process::exit(1);
    }
}
