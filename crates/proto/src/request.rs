//! What a client asks ([`Request`]), and the checks a decoded request must
//! pass before the server acts on it ([`Request::validate`]): the bounds
//! decoding alone cannot enforce.

use serde::{Deserialize, Serialize};

use crate::{Mode, TracerKind, MAX_NAME, MAX_PATTERNS, MEMORY_BUDGET, RING_RECORDS};

/// What a session records, decided in the traced process before anything
/// reaches a buffer (the tracers' volume control).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Controls {
    /// Graph tracer: record only calls nested less deep than this
    /// (uftrace's `-D`; 1 = top-level calls only).
    pub depth: Option<u32>,
    /// Graph tracer: record only calls that last at least this long, in ns
    /// (uftrace's `-t`), with their callers.
    pub min_duration_ns: Option<u64>,
    /// Record nothing until one of these functions is called (ftrace's
    /// `traceon` trigger; the function's own call is recorded).
    pub start_at: Vec<String>,
    /// Stop recording when one of these functions is called (`traceoff`).
    pub stop_at: Vec<String>,
    /// Flight recorder: freeze the buffers for a snapshot when one of these
    /// functions is called.
    pub snapshot_at: Vec<String>,
}

impl Controls {
    /// Whether any control is set.
    pub fn any(&self) -> bool {
        *self != Controls::default()
    }

    fn patterns(&self) -> impl Iterator<Item = &String> {
        self.start_at
            .iter()
            .chain(&self.stop_at)
            .chain(&self.snapshot_at)
    }
}

/// What a client asks. Unknown fields are refused, so a typo is an error
/// rather than a silently ignored option.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", deny_unknown_fields)]
pub enum Request {
    /// Must come first; `version` must be [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
    Hello {
        /// The client's protocol version.
        version: u32,
        /// Free text for logs: the client's name.
        client: String,
    },
    /// Does nothing but renew the connection's lease.
    Ping,
    /// Traceable functions (all when `glob` is `None`).
    ListFunctions {
        /// A glob over full names.
        glob: Option<String>,
        /// Only functions whose site is currently enabled.
        enabled_only: bool,
    },
    /// Every enabled function, with its ops and trampoline.
    EnabledFunctions,
    /// Functions compiled without a site that `glob` names and that
    /// cannot be given one by prologue relocation, each with its reason.
    WhyNot {
        /// A glob over full names.
        glob: String,
    },
    /// Starts a tracing session owned by this connection.
    StartTrace {
        /// The tracer.
        tracer: TracerKind,
        /// Functions to trace: names, globs, or `0x…` site addresses.
        filter: Vec<String>,
        /// Functions never to trace.
        notrace: Vec<String>,
        /// Ring buffer records per thread (a power of two in
        /// [`RING_RECORDS`]); the tracer's default when `None`.
        buffer_records: Option<u64>,
        /// How the buffers are used; flight recorder (overwrite) when
        /// `None`.
        #[serde(default)]
        mode: Option<Mode>,
        /// Bytes of buffers the session may use in all (in
        /// [`MEMORY_BUDGET`]); the tracer's default when `None`.
        #[serde(default)]
        memory_budget: Option<u64>,
        /// What to record at all.
        #[serde(default)]
        controls: Controls,
        /// Do not give the functions a filter names that have no site one
        /// by prologue relocation (which is on by default: see
        /// `livetrace_ftrace::set_relocate_on_demand`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        no_relocate: bool,
    },
    /// The session's buffers, to consume them directly: answered with
    /// [`Response::Buffers`](crate::Response::Buffers), which passes the two memory files with
    /// `SCM_RIGHTS` (read them with [`Client::call_with_fds`](crate::Client::call_with_fds)).
    MapBuffers {
        /// The session.
        session: u32,
    },
    /// The names of the functions a session traces, a page at a time.
    Functions {
        /// The session.
        session: u32,
        /// Skip this many functions (the previous page's `next`).
        from: u32,
    },
    /// Freezes a flight-recorder session's buffers and passes them, for a
    /// snapshot (answered with [`Response::Buffers`](crate::Response::Buffers)); the session of this
    /// connection, or of any connection when `None` and there is exactly
    /// one. They stay frozen until [`Request::Thaw`] or the end of this
    /// connection.
    Snapshot {
        /// The session, if not the only flight recorder.
        session: Option<u32>,
    },
    /// Lets a session frozen by [`Request::Snapshot`] (or a snapshot
    /// trigger) record again.
    Thaw {
        /// The session.
        session: u32,
    },
    /// Takes over the session `livetrace record` started before `main`
    /// (only on the connection it created): answered with `Started`.
    Recording,
    /// Events recorded since the previous poll, consumed.
    PollEvents {
        /// The session.
        session: u32,
    },
    /// Detaches the session's tracer; answers with the first batch of the
    /// remaining events (poll again while `more`) and the final profile.
    StopTrace {
        /// The session.
        session: u32,
    },
    /// The profile so far (profile tracer).
    Profile {
        /// The session.
        session: u32,
    },
    /// Redirects every call of `original` to `replacement`: two `#[traced]`
    /// functions whose recorded signatures are known and equal.
    Patch {
        /// Full name (or `0x…` site address) of the function to replace.
        original: String,
        /// Full name (or `0x…` site address) of its replacement.
        replacement: String,
        /// Keep the patch after this connection ends (until a `Revert`);
        /// otherwise it is reverted with the connection.
        persist: bool,
    },
    /// Reverts a patch.
    Revert {
        /// The patch id.
        patch: u32,
    },
    /// Every patch in place.
    ListPatches,
}

impl Request {
    /// Checks the values a well-formed request may still get wrong, so the
    /// server never passes them on (ring sizes the ring crate would assert
    /// on, empty patterns, absurd pattern counts).
    pub fn validate(&self) -> Result<(), String> {
        let long = |p: &String| p.len() > MAX_NAME;
        match self {
            Request::ListFunctions { glob: Some(g), .. } | Request::WhyNot { glob: g }
                if long(g) =>
            {
                Err(format!("glob longer than {MAX_NAME} bytes"))
            }
            Request::StartTrace {
                tracer,
                filter,
                notrace,
                buffer_records,
                mode,
                memory_budget,
                controls,
                no_relocate: false,
                ..
            } => {
                if filter.len() + notrace.len() + controls.patterns().count() > MAX_PATTERNS {
                    return Err(format!("more than {MAX_PATTERNS} patterns"));
                }
                if let Some(p) = filter
                    .iter()
                    .chain(notrace)
                    .chain(controls.patterns())
                    .find(|p| p.trim().is_empty())
                {
                    return Err(format!("empty pattern {p:?}"));
                }
                if filter
                    .iter()
                    .chain(notrace)
                    .chain(controls.patterns())
                    .any(long)
                {
                    return Err(format!("pattern longer than {MAX_NAME} bytes"));
                }
                if let Some(b) = memory_budget {
                    if !MEMORY_BUDGET.contains(b) {
                        return Err(format!(
                            "memory budget {b} bytes: must be from {} to {}",
                            MEMORY_BUDGET.start(),
                            MEMORY_BUDGET.end()
                        ));
                    }
                }
                if controls.depth == Some(0) {
                    return Err("a depth limit of 0 records nothing".into());
                }
                let graph_only = controls.depth.is_some() || controls.min_duration_ns.is_some();
                if graph_only && *tracer != TracerKind::Graph {
                    return Err(format!(
                        "--depth and --min-duration need the graph tracer, not {tracer}"
                    ));
                }
                if !controls.snapshot_at.is_empty() && *mode != Some(Mode::Flight) {
                    return Err("a snapshot trigger needs the flight recorder".into());
                }
                if let Some(n) = buffer_records {
                    if !n.is_power_of_two() || !RING_RECORDS.contains(n) {
                        return Err(format!(
                            "buffer size {n} records: must be a power of two from {} to {}",
                            RING_RECORDS.start(),
                            RING_RECORDS.end()
                        ));
                    }
                }
                Ok(())
            }
            Request::Patch {
                original,
                replacement,
                ..
            } => {
                if original.is_empty() || replacement.is_empty() {
                    return Err("a patch names two functions".into());
                }
                if long(original) || long(replacement) {
                    return Err(format!("function name longer than {MAX_NAME} bytes"));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
