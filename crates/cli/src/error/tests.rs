use std::error::Error as _;

use super::*;

fn os(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

#[test]
fn exit_codes() {
    let unsuited = || ConvertError::Unsuited("no".into());
    let cases: Vec<(Error, u8)> = vec![
        (usage("bad"), 2),
        (Error::ReaderGone, 141),
        (Error::write(io::ErrorKind::BrokenPipe.into()), 141),
        (Error::write(os(libc::ENOSPC)), 1),
        (
            Error::Convert {
                dest: None,
                source: unsuited(),
            },
            2,
        ),
        // Converting into a named file: the write failed, not the usage.
        (
            Error::Convert {
                dest: Some("x.json".into()),
                source: unsuited(),
            },
            1,
        ),
        (
            Error::Convert {
                dest: None,
                source: ConvertError::Input("not a trace".into()),
            },
            1,
        ),
        // A stop keeps the code of its cause.
        (
            Error::Stopped {
                source: Box::new(Error::ReaderGone),
                note: String::new(),
            },
            141,
        ),
        (
            Error::Stopped {
                source: Box::new(usage("bad")),
                note: String::new(),
            },
            2,
        ),
        (
            Error::Stopped {
                source: Box::new(Error::write(os(libc::ENOSPC))),
                note: String::new(),
            },
            1,
        ),
        // Attaching failed, whatever the cause said.
        (
            Error::CannotAttach {
                pid: 1,
                source: Box::new(usage("bad")),
            },
            1,
        ),
        (Error::Refused(Refusal::NoSuchProcess(7)), 1),
        (Error::Client(ClientError::Unexpected("x".into())), 1),
        (Error::UnexpectedReply, 1),
        (Error::NoMatch { glob: "x".into() }, 1),
    ];
    for (e, code) in cases {
        assert_eq!(e.exit_code(), code, "{e:?}");
    }
}

/// The chain from what the user reads down to the system's error.
fn chain(e: &Error) -> Vec<String> {
    let mut out = Vec::new();
    let mut at: Option<&dyn std::error::Error> = e.source();
    while let Some(s) = at {
        out.push(s.to_string());
        at = s.source();
    }
    out
}

#[test]
fn sources_reach_the_underlying_error() {
    let e = Error::CannotAttach {
        pid: 42,
        source: Box::new(Error::from(livetrace_inject::Error::Ptrace {
            op: "seize",
            tid: 42,
            source: os(libc::EPERM),
        })),
    };
    let c = chain(&e);
    assert_eq!(c.len(), 3, "{c:?}");
    assert!(c[0].starts_with("ptrace seize on thread 42"), "{c:?}");
    let root = e.source().unwrap().source().unwrap().source().unwrap();
    assert_eq!(
        root.downcast_ref::<io::Error>().unwrap().raw_os_error(),
        Some(libc::EPERM)
    );
    // A refusal is its own variant, whichever way it arrives.
    let r = Error::from(livetrace_inject::Error::Refused(Refusal::NoSuchProcess(9)));
    assert!(matches!(r, Error::Refused(Refusal::NoSuchProcess(9))));
    assert!(r.source().unwrap().downcast_ref::<Refusal>().is_some());

    // A control-socket connection refused: the io error under the
    // protocol's.
    let e = Error::from(ClientError::Connect("/s".into(), os(libc::ECONNREFUSED)));
    assert!(e.source().unwrap().downcast_ref::<ClientError>().is_some());
    assert_eq!(
        e.source()
            .unwrap()
            .source()
            .unwrap()
            .downcast_ref::<io::Error>()
            .unwrap()
            .raw_os_error(),
        Some(libc::ECONNREFUSED)
    );

    // A stopped recording: its cause, then the write's io error.
    let e = Error::Stopped {
        source: Box::new(Error::write(os(libc::ENOSPC))),
        note: "n".into(),
    };
    let root = e.source().unwrap().source().unwrap();
    assert_eq!(
        root.downcast_ref::<io::Error>().unwrap().raw_os_error(),
        Some(libc::ENOSPC)
    );
    assert!(e.to_string().starts_with("cannot write the output: "));
    assert!(e.to_string().ends_with("; n"));

    let e = Error::Convert {
        dest: None,
        source: ConvertError::Io(os(libc::EIO)),
    };
    assert!(e.source().unwrap().downcast_ref::<ConvertError>().is_some());
    // Failures that are this command's own findings have no source.
    assert!(Error::NoMatch { glob: "x".into() }.source().is_none());
    assert!(usage("x").source().is_none());
}

#[test]
fn messages_read_as_before() {
    let no_patch = |existing: Vec<String>| Error::NoPatch {
        pid: 5,
        original: "a".into(),
        replacement: "b".into(),
        existing,
    };
    assert_eq!(
        no_patch(vec![]).to_string(),
        "no patch a -> b in process 5 (it has none)"
    );
    assert_eq!(
        no_patch(vec!["a -> c".into(), "d -> e".into()]).to_string(),
        "no patch a -> b in process 5 (it has: a -> c; d -> e)"
    );
    assert_eq!(
        Error::StaticTls {
            message: "m".into(),
            need: Some(2048)
        }
        .to_string(),
        "m: the process has too little static TLS left for livetrace's thread-local state \
         (2048 bytes); start the program with \
         GLIBC_TUNABLES=glibc.rtld.optional_static_tls=16384 to reserve more"
    );
    assert_eq!(
        Error::InsideSled {
            tid: 3,
            in_rip: false,
            addr: 0x10,
            attempts: 50
        }
        .to_string(),
        "thread 3 stayed inside a function's entry sled (returning to 0x10) for 50 attempts; \
         try again"
    );
    assert_eq!(
        Error::CannotAttach {
            pid: 9,
            source: Box::new(Error::Refused(Refusal::NoSuchProcess(9))),
        }
        .to_string(),
        format!(
            "process 9 runs no livetrace control socket, and livetrace cannot be loaded into \
             it: {}",
            Refusal::NoSuchProcess(9)
        )
    );
    assert_eq!(
        Error::Write {
            dest: Some("o.txt".into()),
            source: io::ErrorKind::Other.into()
        }
        .to_string(),
        format!(
            "cannot write o.txt: {}",
            io::Error::from(io::ErrorKind::Other)
        )
    );
}
