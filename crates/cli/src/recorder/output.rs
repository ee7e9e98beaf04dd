//! Where a recording goes: a file written as `NAME.part` and renamed
//! when complete, a live writer fed as records arrive, or a profile table;
//! and the END block that says how it ended.

use super::*;

/// The recording kept next to `dest` while tracing, for the formats
/// converted at the end.
pub(super) fn part_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.{}.lttrace.part", std::process::id()))
}

/// A streaming writer of `livetrace-output` for `format` to `dest`.
pub(super) fn live(format: Format, dest: Option<&Path>, a: &Attached) -> Result<Output, Error> {
    use livetrace_output::convert::{sink_for, Dest};
    let d = dest.map_or(Dest::Stdout, |p| Dest::Path(p.to_path_buf()));
    let (sink, _) = sink_for(format, a.tracer, &d).map_err(|source| Error::Convert {
        dest: dest.map(Path::to_path_buf),
        source,
    })?;
    Ok(Output::Live {
        out: LiveOut::new(sink, &a.process(), a.clock()).map_err(write_error)?,
        dest: dest.map(Path::to_path_buf),
    })
}

impl Output {
    /// Opens the output for `format` at `dest` (the terminal when `None`).
    pub fn open(format: Format, dest: Option<&Path>, a: &Attached) -> Result<Output, Error> {
        let create = |p: &Path| {
            FileOut::create(p, &a.info(), &a.clock())
                .map_err(|e| Error::io(format!("cannot create {}", p.display()), e))
        };
        match (format, dest) {
            (Format::Lttrace, Some(p)) => Ok(Output::File {
                out: create(p)?,
                path: p.to_path_buf(),
                convert: None,
            }),
            // Written as records come: the aggregating outputs (small,
            // whatever the trace's length), and anything to the terminal.
            (Format::Folded | Format::Svg | Format::Profile, Some(p)) => live(format, Some(p), a),
            (_, None) => live(format, None, a),
            // Recorded as is, converted at the end: binary all the way.
            (_, Some(p)) => {
                let part = part_path(p);
                Ok(Output::File {
                    out: create(&part)?,
                    path: part,
                    convert: Some((p.to_path_buf(), format)),
                })
            }
        }
    }

    pub fn out(&mut self) -> &mut dyn Out {
        match self {
            Output::File { out, .. } => out,
            Output::Live { out, .. } => out,
        }
    }

    /// Removes a half-written conversion's recording (on failure).
    pub fn abandon(self) {
        if let Output::File {
            path,
            convert: Some(_),
            ..
        } = self
        {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Ends the output: the END block, then the conversion if one is due.
    /// Returns where the result is.
    pub fn close(self, end: &End) -> Result<String, Error> {
        match self {
            Output::File { out, path, convert } => {
                out.finish(end).map_err(|source| Error::Write {
                    dest: Some(path.clone()),
                    source,
                })?;
                let Some((dest, format)) = convert else {
                    return Ok(path.display().to_string());
                };
                let converted = (|| {
                    use livetrace_output::convert as c;
                    let mut rec = c::Recording::open(&path)
                        .map_err(|source| Error::Convert { dest: None, source })?;
                    c::convert(&mut rec, format, &c::Dest::Path(dest.clone())).map_err(|source| {
                        Error::Convert {
                            dest: Some(dest.clone()),
                            source,
                        }
                    })
                })();
                let _ = std::fs::remove_file(&path);
                converted?;
                Ok(dest.display().to_string())
            }
            Output::Live { out, dest } => {
                match out.finish() {
                    Ok(_) => {}
                    // The terminal's reader went away (`| head`): done.
                    Err(e) if dest.is_none() && e.kind() == io::ErrorKind::BrokenPipe => {}
                    Err(e) => return Err(write_error(e)),
                }
                Ok(dest.map_or("the terminal".to_string(), |d| d.display().to_string()))
            }
        }
    }
}

/// Writes the profile tracer's rows in `format` to `dest`.
pub fn write_profile(
    rows: &[ProfileRow],
    format: Format,
    dest: Option<&Path>,
    info: &Info,
    end: &End,
) -> Result<(), Error> {
    let dest_buf = dest.map(Path::to_path_buf);
    if let (Format::Lttrace, Some(p)) = (format, dest) {
        let io = |source| crate::Error::Write {
            dest: dest_buf.clone(),
            source,
        };
        let mut out = FileOut::create(p, info, &ClockCal::default()).map_err(io)?;
        out.profile(rows).map_err(io)?;
        return out.finish(end).map_err(io);
    }
    use livetrace_output::convert::{write_profile as write, Dest, Error};
    let d = dest.map_or(Dest::Stdout, |p| Dest::Path(p.to_path_buf()));
    match write(rows, format, &d) {
        Ok(()) => Ok(()),
        Err(Error::Io(e)) if dest.is_none() && e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(Error::Io(source)) => Err(crate::Error::Write {
            dest: dest_buf,
            source,
        }),
        Err(source) => Err(crate::Error::Convert {
            dest: dest_buf,
            source,
        }),
    }
}

/// The END block for how recording stopped.
pub fn end(reason: EndReason, status: i32, message: impl Into<String>) -> End {
    End {
        reason,
        status,
        message: message.into(),
    }
}
