//! livetrace's benchmarks. Each subcommand prints human-readable progress on
//! stderr and machine-readable `RESULT key=value ...` lines on stdout.
//!
//! Times are wall-clock medians over interleaved rounds, with the baseline
//! measured in the same process: the machines are shared and noisy.

mod attach;
mod c;
mod callback;
mod convert;
mod datapath;
mod disabled;
mod patch;
mod quiesce;
mod relocated;
mod sleds;
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
    /// Register/unregister cycles with threads blocked in `poll`: the
    /// quiescence wait's time, the signals it sends, the EINTRs seen.
    Quiesce(quiesce::Args),
    /// Sled conversion under one stop of the world, per site.
    Convert(sleds::Args),
    /// Share of a stock object's functions whose prologue can be relocated
    /// (no compiler site needed), with the refusal reasons.
    Relocated(relocated::Args),
    /// Records from a hot C program to a file with `livetrace record`:
    /// kept, lost, bandwidth against write(2), the command's memory, JSON
    /// conversion, uftrace on the same program.
    Datapath(datapath::Args),
    /// Converting a recorded trace: events/s and the converter's peak RSS
    /// (JSON by default; --formats for others).
    ConvertJson(convert::Args),
    /// The converter process `convert-json` measures.
    #[command(hide = true)]
    ConvertChild(convert::ChildArgs),
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
        Bench::Relocated(a) => relocated::run(a),
        Bench::Quiesce(a) => quiesce::run(a),
        Bench::Convert(a) => sleds::run(a),
        Bench::Datapath(a) => datapath::run_bench(a),
        Bench::ConvertJson(a) => convert::run(a),
        Bench::ConvertChild(a) => convert::child(a),
    }
}
