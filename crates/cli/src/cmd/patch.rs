//! `livetrace patch PID ORIGINAL REPLACEMENT [--revert]`.

use std::path::Path;

use livetrace_proto::{Request, Response};

use crate::ui::Style;
use crate::{connect, Error};

#[derive(clap::Args)]
pub struct Args {
    /// The process
    pid: u32,
    /// Full name of the function to replace (see `livetrace ls`)
    original: String,
    /// Full name of its replacement
    replacement: String,
    /// Remove the patch ORIGINAL -> REPLACEMENT instead
    #[arg(long)]
    revert: bool,
}

pub fn run(dir: &Path, a: Args) -> Result<(), Error> {
    let Args {
        pid,
        original,
        replacement,
        revert,
    } = a;
    let (original, replacement) = (original.as_str(), replacement.as_str());
    let style = Style::stdout();
    let mut c = connect(dir, pid)?;
    if revert {
        let Response::Patches { patches } = c.call(&Request::ListPatches)? else {
            return Err(Error::UnexpectedReply);
        };
        let Some(p) = patches
            .iter()
            .find(|p| p.original == original && p.replacement == replacement)
        else {
            return Err(Error::NoPatch {
                pid,
                original: original.to_string(),
                replacement: replacement.to_string(),
                existing: patches
                    .iter()
                    .map(|p| format!("{} -> {}", p.original, p.replacement))
                    .collect(),
            });
        };
        c.call(&Request::Revert { patch: p.id })?;
        println!(
            "reverted {} -> {}: calls go to {} again",
            style.name(&p.original),
            style.name(&p.replacement),
            p.original
        );
        return Ok(());
    }
    let Response::Patched { patch } = c.call(&Request::Patch {
        original: original.to_string(),
        replacement: replacement.to_string(),
        persist: true,
    })?
    else {
        return Err(Error::UnexpectedReply);
    };
    println!(
        "patched {} -> {} ({}), patch {}; it stays until `livetrace patch {pid} {} {} --revert`",
        style.name(&patch.original),
        style.name(&patch.replacement),
        patch.signature,
        patch.id,
        patch.original,
        patch.replacement
    );
    Ok(())
}
