//! Words every part of livetrace uses the same way: tracers, buffer modes,
//! output formats, how livetrace's own symbols read.

use std::fmt;
use std::path::Path;

/// Which tracer a session runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Tracer {
    /// One event per call: function and caller.
    Function,
    /// Entry and exit of every call, with depth and duration.
    Graph,
    /// Per function: calls, total and self time, min and max; no events.
    Profile,
}

impl Tracer {
    /// Its name, as parsed.
    pub fn name(self) -> &'static str {
        match self {
            Tracer::Function => "function",
            Tracer::Graph => "graph",
            Tracer::Profile => "profile",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Tracer::Function => 1,
            Tracer::Graph => 2,
            Tracer::Profile => 3,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Tracer> {
        match c {
            1 => Some(Tracer::Function),
            2 => Some(Tracer::Graph),
            3 => Some(Tracer::Profile),
            _ => None,
        }
    }
}

impl std::str::FromStr for Tracer {
    type Err = String;
    fn from_str(s: &str) -> Result<Tracer, String> {
        match s {
            "function" => Ok(Tracer::Function),
            "graph" | "function_graph" => Ok(Tracer::Graph),
            "profile" => Ok(Tracer::Profile),
            other => Err(format!(
                "unknown tracer '{other}' (function, graph or profile)"
            )),
        }
    }
}

impl fmt::Display for Tracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a session's buffers are used, as the kernel's ring buffer has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Mode {
    /// A consumer moves records out as they come; when it falls behind, a
    /// full buffer refuses new records (counted), never blocking the program.
    Stream,
    /// Each buffer keeps the newest records, overwriting the oldest; a
    /// snapshot copies what they hold.
    Flight,
}

impl Mode {
    pub(crate) fn code(self) -> u8 {
        match self {
            Mode::Stream => 1,
            Mode::Flight => 2,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Mode> {
        match c {
            1 => Some(Mode::Stream),
            2 => Some(Mode::Flight),
            _ => None,
        }
    }
}

/// The output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// This crate's file: the records as recorded (`.lttrace`).
    Lttrace,
    /// ftrace's text layouts (function / function_graph), or the profile
    /// table for the profile tracer (`.txt`).
    Text,
    /// Chrome Trace Event JSON (Perfetto UI, `chrome://tracing`); profile
    /// rows as a JSON array for the profile tracer (`.json`).
    Json,
    /// Perfetto's native protobuf trace (`.perfetto-trace`, `.pftrace`).
    Perfetto,
    /// Folded stacks, one `a;b;c weight` line per stack (`.folded`).
    Folded,
    /// A flame graph (`.svg`).
    Svg,
    /// A `uftrace.data` directory for the uftrace tool (`*uftrace.data`).
    Uftrace,
    /// A per-function table, as `uftrace report` prints (`.profile`).
    Profile,
}

impl Format {
    /// Every format, in the order help texts list them.
    pub const ALL: [Format; 8] = [
        Format::Lttrace,
        Format::Text,
        Format::Json,
        Format::Perfetto,
        Format::Folded,
        Format::Svg,
        Format::Uftrace,
        Format::Profile,
    ];

    /// Its name, as parsed (`--format NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Lttrace => "lttrace",
            Format::Text => "text",
            Format::Json => "json",
            Format::Perfetto => "perfetto",
            Format::Folded => "folded",
            Format::Svg => "svg",
            Format::Uftrace => "uftrace",
            Format::Profile => "profile",
        }
    }

    /// The format a file name implies, if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?;
        if name.ends_with("uftrace.data") {
            return Some(Format::Uftrace);
        }
        let ext = name.rsplit_once('.')?.1;
        Some(match ext {
            "lttrace" => Format::Lttrace,
            "txt" | "trace" => Format::Text,
            "json" => Format::Json,
            "perfetto-trace" | "pftrace" => Format::Perfetto,
            "folded" => Format::Folded,
            "svg" => Format::Svg,
            "profile" => Format::Profile,
            _ => return None,
        })
    }

    /// `--format`'s value if given, else the format `path`'s name implies,
    /// else (no path) text.
    pub fn choose(format: Option<Format>, path: Option<&Path>) -> Result<Format, String> {
        if let Some(f) = format {
            return Ok(f);
        }
        let Some(path) = path else {
            return Ok(Format::Text);
        };
        Format::from_path(path).ok_or_else(|| {
            format!(
                "cannot tell the format of '{}' from its name (.lttrace, .txt, .json, \
                 .perfetto-trace, .folded, .svg, .profile, or a directory named *uftrace.data); \
                 use --format",
                path.display()
            )
        })
    }

    /// Whether `tracer`'s recordings can be written in this format, and why
    /// not: the profile tracer keeps a table, no events.
    pub fn suits(self, tracer: Tracer) -> Result<(), String> {
        let ok = match tracer {
            Tracer::Profile => matches!(
                self,
                Format::Lttrace | Format::Text | Format::Json | Format::Profile
            ),
            Tracer::Function => self != Format::Profile,
            Tracer::Graph => true,
        };
        if ok {
            Ok(())
        } else if tracer == Tracer::Profile {
            Err(format!(
                "the profile tracer keeps no events, so it cannot write {}; use the function or \
                 graph tracer, or lttrace/text/json/profile",
                self.name()
            ))
        } else {
            Err(format!(
                "the {tracer} tracer records no durations, so it cannot write {}; use the graph \
                 tracer",
                self.name()
            ))
        }
    }

    /// The output is a directory, not a file.
    pub fn is_directory(self) -> bool {
        self == Format::Uftrace
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
                format!("unknown format '{s}' ({})", names.join(", "))
            })
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a symbol reads to people. The hidden body function of a
/// `#[traced]` Rust function (which is where its callees return to) is
/// named after the function itself; every other name is unchanged.
pub fn display_symbol(symbol: &str) -> String {
    // Trait-impl bodies: `<T as path::__livetrace_bodies_HEX>::__livetrace_body_m`.
    if let Some(body) = symbol.find(">::__livetrace_body_") {
        if let (Some(start), Some(as_)) = (symbol.find('<'), symbol.find(" as ")) {
            if start == 0 && as_ < body {
                let ty = &symbol[1..as_];
                let m = &symbol[body + ">::__livetrace_body_".len()..];
                return format!("{ty}::{m}");
            }
        }
    }
    // Methods: `path::Type::__livetrace_body_m`; free functions:
    // `path::f::__livetrace_body`.
    if let Some(p) = symbol.strip_suffix("::__livetrace_body") {
        return p.to_string();
    }
    symbol.replacen("::__livetrace_body_", "::", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_from_names() {
        let c = |p: &str| Format::choose(None, Some(Path::new(p)));
        assert_eq!(c("a.txt"), Ok(Format::Text));
        assert_eq!(c("a.json"), Ok(Format::Json));
        assert_eq!(c("a.folded"), Ok(Format::Folded));
        assert_eq!(c("x/a.svg"), Ok(Format::Svg));
        assert_eq!(c("uftrace.data"), Ok(Format::Uftrace));
        assert_eq!(c("run1.uftrace.data"), Ok(Format::Uftrace));
        assert_eq!(c("r.lttrace"), Ok(Format::Lttrace));
        assert_eq!(c("r.perfetto-trace"), Ok(Format::Perfetto));
        assert_eq!(c("r.profile"), Ok(Format::Profile));
        assert!(c("a.bin").is_err());
        assert!(c("noext").is_err());
        assert_eq!(
            Format::choose(Some(Format::Json), Some(Path::new("a.bin"))),
            Ok(Format::Json)
        );
        assert_eq!(Format::choose(None, None), Ok(Format::Text));
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>(), Ok(f));
        }
        assert!("nope".parse::<Format>().is_err());
    }

    #[test]
    fn what_suits_which_tracer() {
        assert!(Format::Folded.suits(Tracer::Profile).is_err());
        assert!(Format::Text.suits(Tracer::Profile).is_ok());
        assert!(Format::Profile.suits(Tracer::Function).is_err());
        assert!(Format::Uftrace.suits(Tracer::Function).is_ok());
        for f in Format::ALL {
            assert!(f.suits(Tracer::Graph).is_ok());
        }
    }

    #[test]
    fn tracers_parse() {
        assert_eq!("graph".parse::<Tracer>(), Ok(Tracer::Graph));
        assert_eq!("function_graph".parse::<Tracer>(), Ok(Tracer::Graph));
        assert!("x".parse::<Tracer>().is_err());
        for t in [Tracer::Function, Tracer::Graph, Tracer::Profile] {
            assert_eq!(Tracer::from_code(t.code()), Some(t));
            assert_eq!(t.to_string().parse::<Tracer>(), Ok(t));
        }
    }

    #[test]
    fn traced_bodies_read_as_their_functions() {
        assert_eq!(
            display_symbol("shop::checkout::__livetrace_body"),
            "shop::checkout"
        );
        assert_eq!(
            display_symbol("shop::Cart::__livetrace_body_total"),
            "shop::Cart::total"
        );
        assert_eq!(
            display_symbol("<shop::Cart as shop::__livetrace_bodies_00ff>::__livetrace_body_fmt"),
            "shop::Cart::fmt"
        );
        assert_eq!(display_symbol("std::rt::lang_start"), "std::rt::lang_start");
    }
}
