//! `pmm-cp`: parse the configuration, start logging, run the chosen command.

use clap::Parser;
use pmmcp::config::Cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (2.x and 3.x).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the system at once. By default mimalloc purges 10 ms later, on
/// the thread's next allocation, which an idle thread never makes: a server with 10,000 idle
/// streams then keeps what a burst (a fan-out, a render) freed.
/// `MIMALLOC_PURGE_DELAY` (ms), read by mimalloc itself, still overrides this.
fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some_and(|v| !v.is_empty()) {
        return;
    }
    // SAFETY: mi_option_set only stores an integer option; any value is valid for this one.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    purge_freed_memory_at_once();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match pmmcp::app::run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(pmmcp::admin::exit_code(&e))
        }
    }
}
