//! `wayfinder-demo`: a collector and a small instrumented fleet on loopback, with traffic and
//! a live table. See the crate's documentation and `README.md`.

use clap::Parser;

/// The collector binary's allocator (see `wayfinder-collector`'s `jemalloc` feature).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = wayfinder_demo::Options::parse();
    let mut stdout = std::io::stdout();
    wayfinder_demo::run(options, &mut stdout).await?;
    Ok(())
}
