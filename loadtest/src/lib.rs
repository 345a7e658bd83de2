//! Load scenarios and benchmarks of the trading backend, each measured side by side with the raw
//! limit of the component underneath it in the same run, because the machines we measure on are
//! shared and noisy: only ratios and percentiles from one run are comparable.
//!
//! Flow: `setup` (accounts, cash, instruments and prices through `trading.v1`) -> `bench` (one
//! module per path: `place_order`, `relay`, `portfolio`, each driving load through `load` and
//! summarising with `stats`, while `memory` samples the services' resident memory) ->
//! `results` (one JSON file per run) -> `report` (a self-contained HTML page from those files).
//!
//! Subcommands that need the read regions end to end (`lag`, `ticks`, `verify`, `chaos`) plug in beside
//! `bench`: they reuse `setup` for accounts, `load` for pacing and `results` for their output;
//! `chaos` hurts the stack through `chaos::stack` (processes, Redis data) and `link` (the leaf
//! links' proxies) and checks it with `verify`.

pub mod admin;
pub mod bench;
pub mod chaos;
pub mod grpc;
pub mod lag;
pub mod link;
pub mod load;
pub mod memory;
pub mod report;
pub mod results;
pub mod setup;
pub mod stats;
pub mod status;
pub mod ticks;
pub mod timefmt;
pub mod verify;

use std::path::PathBuf;

/// The workspace root, so default paths (pid files, results) work from any directory.
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
