//! livetrace's benchmarks. Each subcommand prints human-readable progress on
//! stderr and machine-readable `RESULT key=value ...` lines on stdout.
//!
//! Times are wall-clock medians over interleaved rounds, with the baseline
//! measured in the same process: the machines are shared and noisy.

mod attach;
mod c;
mod callback;
mod disabled;
mod patch;
mod stats;
mod tracers;
mod trap;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "livetrace benchmarks (RESULT lines on stdout)")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Batch patching of many sites while threads execute them.
    Patch(patch::Args),
    /// Cost of an emulated int3 hit against a bare int3 round trip.
    Trap(trap::Args),
    /// Cost per call with ops attached: dedicated, list and regs callers.
    Callback(callback::Args),
    /// Cost of a call to a `#[traced]` function with its site disabled.
    Disabled,
    /// The C example's per-call cost, disabled and enabled, against its
    /// uninstrumented build.
    C,
    /// Cost per call recorded by the function tracer.
    Function(tracers::Args),
    /// Cost per call recorded by the function-graph tracer (entry and exit).
    Graph(tracers::Args),
    /// Attaching to a running program started without livetrace: time to
    /// the first event, longest thread stop, detach.
    Attach(attach::Args),
}

fn main() {
    match Cli::parse().bench {
        Bench::Patch(a) => patch::run(a),
        Bench::Trap(a) => trap::run(a),
        Bench::Callback(a) => callback::run(a),
        Bench::Disabled => disabled::run(),
        Bench::C => c::run(),
        Bench::Function(a) => tracers::run(livetrace_tracers::Tracer::Function, a),
        Bench::Graph(a) => tracers::run(livetrace_tracers::Tracer::Graph, a),
        Bench::Attach(a) => attach::run(a),
    }
}
