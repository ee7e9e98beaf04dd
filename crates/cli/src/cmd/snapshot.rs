//! `livetrace snapshot PID`: what a running flight recorder holds, held
//! still while it is copied.

use std::path::Path;

use livetrace_format::EndReason;
use livetrace_proto::Request;

use crate::args::OutputArgs;
use crate::recorder::{end, Attached, Output};
use crate::{connect, usage, Error};

#[derive(clap::Args)]
pub struct Args {
    /// The process
    pid: u32,
    /// The flight-recorder session, when the process runs several
    #[arg(long, value_name = "ID")]
    session: Option<u32>,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(dir: &Path, a: Args) -> Result<(), Error> {
    let c = connect(dir, a.pid)?;
    let mut at = Attached::new(c, a.session, livetrace_format::Tracer::Graph, true, true)?;
    let format = a.out.format(at.tracer).map_err(usage)?;
    let mut output = Output::open(format, a.out.output.as_deref(), &at)?;
    // A closed pipe is an error here too: the snapshot was asked for.
    let write = |source| Error::Write { dest: None, source };
    at.names(output.out()).map_err(write)?;
    if let Some(src) = at.source.as_mut() {
        src.pass(output.out(), false).map_err(write)?;
    }
    // Recording goes on in the process.
    let _ = at.client.call(&Request::Thaw { session: at.id });
    at.locate(output.out()).map_err(write)?;
    let stats = at.stats();
    let place = output.close(&end(EndReason::Snapshot, 0, "snapshot"))?;
    for line in stats.report(&place) {
        eprintln!("livetrace: {line}");
    }
    Ok(())
}
