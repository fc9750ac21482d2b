use std::net::SocketAddr;

use anyhow::Result;
use clap::Parser;

/// Mock LLM upstream speaking the OpenAI, Anthropic, Gemini and Bedrock wire formats, for tests and benchmarks.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "SWITCHYARD_LISTEN", default_value = "127.0.0.1:9999")]
    listen: SocketAddr,
    /// Do not record requests (for benchmarks).
    #[arg(long, env = "SWITCHYARD_NO_RECORD")]
    no_record: bool,
    /// Worker threads (default: one per core).
    #[arg(long, env = "SWITCHYARD_WORKERS")]
    workers: Option<usize>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(w) = args.workers {
        rt.worker_threads(w);
    }
    rt.build()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        tracing::info!(addr = %listener.local_addr()?, "mock LLM listening");
        let state = std::sync::Arc::new(switchyard_tests::mock::MockState::new(!args.no_record));
        switchyard_tests::mock::serve(listener, state).await;
        Ok(())
    })
}
