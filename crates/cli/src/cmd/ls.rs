//! `livetrace ls PID [GLOB]`: a process's traceable functions.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;

use livetrace_proto::{Request, Response};

use crate::ui::{Progress, Style};
use crate::{connect, Error};

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
    /// Functions compiled without a site that GLOB names and that cannot
    /// be given one by prologue relocation, each with the reason
    #[arg(long)]
    why_not: bool,
    /// Never shorten names (to a terminal, names longer than the NAME
    /// column are shortened in the middle)
    #[arg(long, short = 'w')]
    wide: bool,
}

/// The NAME column is at most this wide: a Rust program's closures and
/// trait impls have names of hundreds of characters, and padding every
/// row to the longest would push the other columns off any screen.
const NAME_COLUMN: usize = 60;

/// How names fill the NAME column.
#[derive(Clone, Copy)]
struct Names {
    width: usize,
    /// Shorten longer names (to a terminal); otherwise they overflow their
    /// own row only, so a pipe still gets every name whole.
    shorten: bool,
}

impl Names {
    fn new<'a>(names: impl Iterator<Item = &'a str>, wide: bool) -> Names {
        let longest = names.map(|n| n.chars().count()).max().unwrap_or(0);
        Names {
            width: longest.clamp(4, NAME_COLUMN),
            shorten: !wide && std::io::stdout().is_terminal(),
        }
    }

    /// `name` padded to the column, or shortened in the middle with `…`
    /// (the start says where a function lives, the end which it is); a
    /// disambiguator at the end (`[h…]`, `@0x…`) is kept whole.
    fn fit(&self, name: &str) -> String {
        let n = name.chars().count();
        if n <= self.width || !self.shorten {
            return format!("{name:<w$}", w = self.width);
        }
        if let Some((base, _)) = livetrace_sites::Disambiguator::split(name) {
            let suffix = &name[base.len()..];
            let room = self.width.saturating_sub(suffix.chars().count());
            if room >= 3 {
                let short = Names {
                    width: room,
                    ..*self
                };
                return short.fit(base) + suffix;
            }
        }
        let keep = self.width - 1;
        let head = keep / 2;
        let tail = keep - head;
        let mut s: String = name.chars().take(head).collect();
        s.push('…');
        s.extend(name.chars().skip(n - tail));
        s
    }
}

/// The names to show for rows of (name, address, legacy Rust hash): a
/// name that two or more rows share gets the suffix `-f` takes to pick
/// that one, `[h<hash>]` where it tells the row apart from the others of
/// its name, else `@0x<address>`; other names are left alone.
fn disambiguated<'a>(rows: impl Iterator<Item = (&'a str, u64, Option<&'a str>)>) -> Vec<String> {
    let rows: Vec<_> = rows.collect();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut hashes: HashMap<(&str, &str), usize> = HashMap::new();
    for &(name, _, hash) in &rows {
        *names.entry(name).or_default() += 1;
        if let Some(h) = hash {
            *hashes.entry((name, h)).or_default() += 1;
        }
    }
    rows.iter()
        .map(|&(name, addr, hash)| {
            if names[name] < 2 {
                return name.to_string();
            }
            match hash {
                Some(h) if hashes[&(name, h)] == 1 => format!("{name}[{h}]"),
                _ => format!("{name}@{addr:#x}"),
            }
        })
        .collect()
}

pub fn run(dir: &Path, a: Args) -> Result<(), Error> {
    let Args {
        pid,
        glob,
        enabled,
        signatures,
        why_not,
        wide,
    } = a;
    let style = Style::stdout();
    if !why_not {
        // Listing a program without compiler sites shows nothing until a
        // trace relocated something: not worth loading livetrace for.
        crate::attach::will_not_relocate();
    }
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
    if why_not {
        let glob = glob.unwrap_or_else(|| "*".to_string());
        let Response::NotRelocatable { functions } =
            c.call_with_progress(&Request::WhyNot { glob: glob.clone() }, &mut report)?
        else {
            return Err(Error::UnexpectedReply);
        };
        if functions.is_empty() {
            let _ = writeln!(
                out,
                "{}",
                style.dim(&format!(
                    "no function matching '{glob}' is refused: each has a site or can be given one"
                ))
            );
            return Ok(());
        }
        let names = Names::new(functions.iter().map(|f| f.name.as_str()), wide);
        let w = names.width;
        let kw = functions
            .iter()
            .map(|f| f.kind.len())
            .max()
            .unwrap_or(0)
            .max(4);
        let _ = writeln!(
            out,
            "{}",
            style.bold(&format!(
                "{:<w$}  {:<14}  {:<kw$}  REASON",
                "NAME", "ENTRY", "KIND"
            ))
        );
        for f in &functions {
            let _ = writeln!(
                out,
                "{}  {:<14}  {:<kw$}  {} ({})",
                style.name(&names.fit(&f.name)),
                format!("{:#x}", f.entry),
                f.kind,
                f.reason,
                f.object
            );
        }
        return Ok(());
    }
    if enabled {
        let Response::Enabled { functions } =
            c.call_with_progress(&Request::EnabledFunctions, &mut report)?
        else {
            return Err(Error::UnexpectedReply);
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
        let shown = disambiguated(rows.iter().map(|f| (f.name.as_str(), f.ip, None)));
        let names = Names::new(shown.iter().map(String::as_str), wide);
        let w = names.width;
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
        for (f, name) in rows.iter().zip(&shown) {
            let _ = writeln!(
                out,
                "{}  {:<14}  {:<ow$}  {}",
                style.name(&names.fit(name)),
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
        return Err(Error::UnexpectedReply);
    };
    drop(progress);
    // Where the target recorded no `file:line` (C and C++ functions, Rust
    // ones without `#[traced]`), the object's DWARF may have it.
    let mut sources = crate::source::Sources::new(pid);
    let source_of = |f: &livetrace_proto::Function, sources: &mut Option<_>| {
        let has_line = f
            .source
            .rsplit_once(':')
            .is_some_and(|(_, l)| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()));
        if has_line {
            return f.source.clone();
        }
        sources
            .as_mut()
            .and_then(|s: &mut crate::source::Sources| s.lookup(f.addr))
            .unwrap_or_else(|| f.source.clone())
    };
    let shown = disambiguated(
        functions
            .iter()
            .map(|f| (f.name.as_str(), f.addr, f.hash.as_deref())),
    );
    let names = Names::new(shown.iter().map(String::as_str), wide);
    let w = names.width;
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
    for (f, name) in functions.iter().zip(&shown) {
        let state = if f.state == "nop" {
            style.dim(&format!("{:<16}", f.state))
        } else {
            style.good(&format!("{:<16}", f.state))
        };
        let _ = write!(
            out,
            "{}  {:<14}  {state}  {}",
            style.name(&names.fit(name)),
            format!("{:#x}", f.addr),
            source_of(f, &mut sources)
        );
        if signatures {
            let _ = write!(out, "  {}", f.signature.as_deref().unwrap_or("-"));
        }
        let _ = writeln!(out);
    }
    if functions.is_empty() {
        if let Some(g) = &glob {
            return Err(Error::NoMatch { glob: g.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_shortened_in_the_middle_or_overflow() {
        let long = format!("crate::module::{}::method", "x".repeat(200));
        let names = Names::new(["a", long.as_str()].into_iter(), false);
        assert_eq!(names.width, NAME_COLUMN);
        let cut = Names {
            shorten: true,
            ..names
        };
        let s = cut.fit(&long);
        assert_eq!(s.chars().count(), NAME_COLUMN);
        assert!(s.starts_with("crate::module::x") && s.ends_with("x::method") && s.contains('…'));
        assert_eq!(cut.fit("a").len(), NAME_COLUMN);
        let whole = Names {
            shorten: false,
            ..names
        };
        assert_eq!(whole.fit(&long), long);
        // Short lists keep a narrow column.
        assert_eq!(Names::new(["ab", "abcdef"].into_iter(), false).width, 6);
    }

    #[test]
    fn shared_names_show_what_picks_each() {
        let drop = "core::ptr::drop_in_place<x::Bar>";
        let (h1, h2) = (Some("h1a2b3c4d5e6f7a8b"), Some("h00000000000000ff"));
        let shown = disambiguated(
            [
                ("main", 0x1000, None),
                (drop, 0x2000, h1),
                (drop, 0x3000, h2),
                (drop, 0x4000, h2), // the same instance twice: its hash picks both
                ("helper", 0x5000, None),
                ("helper", 0x6000, None),
                ("lone", 0x7000, h1),
            ]
            .into_iter(),
        );
        assert_eq!(
            shown,
            [
                "main".to_string(),
                format!("{drop}[h1a2b3c4d5e6f7a8b]"),
                format!("{drop}@0x3000"),
                format!("{drop}@0x4000"),
                "helper@0x5000".into(),
                "helper@0x6000".into(),
                "lone".into(),
            ]
        );
        // Each shown name is one `-f` reads as a name that picks one.
        for s in &shown[1..6] {
            assert!(livetrace_sites::Disambiguator::split(s).is_some(), "{s}");
        }
        // The column fits the suffix, and shortening keeps it (the end of
        // a name is kept).
        let names = Names::new(shown.iter().map(String::as_str), false);
        assert_eq!(names.width, drop.len() + "[h1a2b3c4d5e6f7a8b]".len());
        let cut = Names {
            width: 30,
            shorten: true,
        };
        let fitted = cut.fit(&shown[1]);
        assert_eq!(fitted.chars().count(), 30);
        assert!(fitted.starts_with("core:") && fitted.ends_with("r>[h1a2b3c4d5e6f7a8b]"));
        assert_eq!(cut.fit(&shown[4]).trim_end(), "helper@0x5000");
    }
}
