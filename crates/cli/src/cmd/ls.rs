//! `livetrace ls PID [GLOB]`: a process's traceable functions.

use std::io::Write;
use std::path::Path;

use livetrace_proto::{Request, Response};

use crate::ui::{Progress, Style};
use crate::{connect, Fail};

#[derive(clap::Args)]
pub struct Args {
    /// The process
    pid: u32,
    /// Only names matching this glob (`*` any run, `?` one character)
    glob: Option<String>,
    /// Only enabled functions, with the ops attached and the trampoline
    /// their site calls
    #[arg(long)]
    enabled: bool,
    /// Also show each function's recorded signature
    #[arg(long, short = 's')]
    signatures: bool,
}

pub fn run(dir: &Path, a: Args) -> Result<(), Fail> {
    let Args {
        pid,
        glob,
        enabled,
        signatures,
    } = a;
    let style = Style::stdout();
    let mut c = connect(dir, pid)?;
    let mut progress = Progress::new();
    let mut report = |got: u64, total: u64| {
        if total > 1 << 20 {
            progress.update(|| {
                format!(
                    "receiving the function list: {} of {} KiB",
                    got >> 10,
                    total >> 10
                )
            });
        }
    };
    let mut out = std::io::stdout().lock();
    if enabled {
        let Response::Enabled { functions } =
            c.call_with_progress(&Request::EnabledFunctions, &mut report)?
        else {
            return Err("unexpected reply".to_string().into());
        };
        let rows: Vec<_> = functions
            .into_iter()
            .filter(|f| {
                glob.as_deref()
                    .is_none_or(|g| livetrace_sites::Glob::new(g).matches(&f.name))
            })
            .collect();
        if rows.is_empty() {
            let _ = writeln!(out, "{}", style.dim("no enabled functions"));
            return Ok(());
        }
        let w = rows.iter().map(|f| f.name.len()).max().unwrap_or(0).max(4);
        let ow = rows
            .iter()
            .map(|f| f.ops.join(",").len())
            .max()
            .unwrap_or(0)
            .max(3);
        let _ = writeln!(
            out,
            "{}",
            style.bold(&format!(
                "{:<w$}  {:<14}  {:<ow$}  TRAMPOLINE",
                "NAME", "ADDRESS", "OPS"
            ))
        );
        for f in rows {
            let _ = writeln!(
                out,
                "{}  {:<14}  {:<ow$}  {}",
                style.name(&format!("{:<w$}", f.name)),
                format!("{:#x}", f.ip),
                f.ops.join(","),
                f.trampoline
            );
        }
        return Ok(());
    }
    let Response::Functions { functions } = c.call_with_progress(
        &Request::ListFunctions {
            glob: glob.clone(),
            enabled_only: false,
        },
        &mut report,
    )?
    else {
        return Err("unexpected reply".to_string().into());
    };
    drop(progress);
    let w = functions
        .iter()
        .map(|f| f.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let _ = writeln!(
        out,
        "{}",
        style.bold(&format!(
            "{:<w$}  {:<14}  {:<16}  SOURCE{}",
            "NAME",
            "ADDRESS",
            "STATE",
            if signatures { "  SIGNATURE" } else { "" }
        ))
    );
    for f in &functions {
        let state = if f.state == "nop" {
            style.dim(&format!("{:<16}", f.state))
        } else {
            style.good(&format!("{:<16}", f.state))
        };
        let _ = write!(
            out,
            "{}  {:<14}  {state}  {}",
            style.name(&format!("{:<w$}", f.name)),
            format!("{:#x}", f.addr),
            f.source
        );
        if signatures {
            let _ = write!(out, "  {}", f.signature.as_deref().unwrap_or("-"));
        }
        let _ = writeln!(out);
    }
    if functions.is_empty() {
        if let Some(g) = &glob {
            return Err(format!("no traceable function matches '{g}'").into());
        }
    }
    Ok(())
}
