//! The decoders never panic: random bytes and mutated valid frames are
//! either messages or clean errors. A few thousand cases in the normal
//! suite; `LIVETRACE_FUZZ_CASES=1000000 cargo test --release -p
//! livetrace-proto --test fuzz` for a soak (each property runs that many).

use livetrace_proto::*;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("LIVETRACE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // Shrinking a panic is all we would want, and there is none to find.
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn tracer() -> impl Strategy<Value = TracerKind> {
    prop_oneof![
        Just(TracerKind::Function),
        Just(TracerKind::Graph),
        Just(TracerKind::Profile)
    ]
}

fn controls() -> impl Strategy<Value = Controls> {
    let s = || proptest::collection::vec(".{0,8}", 0..2);
    (
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u64>()),
        s(),
        s(),
        s(),
    )
        .prop_map(
            |(depth, min_duration_ns, start_at, stop_at, snapshot_at)| Controls {
                depth,
                min_duration_ns,
                start_at,
                stop_at,
                snapshot_at,
            },
        )
}

fn request() -> impl Strategy<Value = Request> {
    let s = || ".{0,12}";
    prop_oneof![
        (any::<u32>(), s()).prop_map(|(version, client)| Request::Hello { version, client }),
        Just(Request::Ping),
        (proptest::option::of(s()), any::<bool>())
            .prop_map(|(glob, enabled_only)| Request::ListFunctions { glob, enabled_only }),
        Just(Request::EnabledFunctions),
        ".{0,40}".prop_map(|glob| Request::WhyNot { glob }),
        (
            tracer(),
            proptest::collection::vec(s(), 0..4),
            proptest::collection::vec(s(), 0..3),
            proptest::option::of(any::<u64>()),
            proptest::option::of(prop_oneof![Just(Mode::Stream), Just(Mode::Flight)]),
            proptest::option::of(any::<u64>()),
            controls(),
        )
            .prop_map(
                |(tracer, filter, notrace, buffer_records, mode, memory_budget, controls)| {
                    Request::StartTrace {
                        tracer,
                        filter,
                        notrace,
                        buffer_records,
                        mode,
                        memory_budget,
                        controls,
                        no_relocate: false,
                    }
                }
            ),
        any::<u32>().prop_map(|session| Request::MapBuffers { session }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(session, from)| Request::Functions { session, from }),
        proptest::option::of(any::<u32>()).prop_map(|session| Request::Snapshot { session }),
        any::<u32>().prop_map(|session| Request::Thaw { session }),
        Just(Request::Recording),
        any::<u32>().prop_map(|session| Request::PollEvents { session }),
        any::<u32>().prop_map(|session| Request::StopTrace { session }),
        any::<u32>().prop_map(|session| Request::Profile { session }),
        (s(), s(), any::<bool>()).prop_map(|(original, replacement, persist)| Request::Patch {
            original,
            replacement,
            persist
        }),
        any::<u32>().prop_map(|patch| Request::Revert { patch }),
        Just(Request::ListPatches),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Length(u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1..8usize).prop_map(|(i, n)| Mutation::Remove(i, n)),
        any::<u32>().prop_map(Mutation::Length),
    ]
}

fn apply(buf: &mut Vec<u8>, m: &Mutation) {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    match m {
        Mutation::Flip(i, x) => {
            if !buf.is_empty() {
                let i = at(*i, buf.len());
                buf[i] ^= x;
            }
        }
        Mutation::Truncate(i) => {
            let i = at(*i, buf.len());
            buf.truncate(i);
        }
        Mutation::Insert(i, b) => {
            let i = at(*i, buf.len() + 1);
            buf.splice(i..i, b.iter().copied());
        }
        Mutation::Remove(i, n) => {
            let i = at(*i, buf.len());
            let end = (i + n).min(buf.len());
            buf.drain(i..end);
        }
        Mutation::Length(n) => {
            if buf.len() >= 4 {
                buf[..4].copy_from_slice(&n.to_le_bytes());
            }
        }
    }
}

/// What a server does with a byte stream: frames until the first error.
fn decode_stream(bytes: &[u8]) -> Vec<Result<Request, String>> {
    let mut r = bytes;
    let mut out = Vec::new();
    loop {
        match read_frame(&mut r, MAX_FRAME) {
            Ok(p) => match decode_request(&p) {
                Ok(req) => {
                    // Validation must be total too.
                    let _ = req.validate();
                    out.push(Ok(req));
                }
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            },
            Err(FrameError::Closed) => return out,
            Err(e) => {
                out.push(Err(e.to_string()));
                return out;
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        decode_stream(&bytes);
        let _ = decode_request(&bytes);
        let _ = decode_response(&bytes);
    }

    #[test]
    fn valid_frames_round_trip(reqs in proptest::collection::vec(request(), 1..4)) {
        let mut bytes = Vec::new();
        for r in &reqs {
            write_frame(&mut bytes, &encode(r)).unwrap();
        }
        let got: Vec<Request> = decode_stream(&bytes).into_iter().map(|r| r.unwrap()).collect();
        prop_assert_eq!(got, reqs);
    }

    #[test]
    fn mutated_frames_never_panic(
        reqs in proptest::collection::vec(request(), 1..3),
        muts in proptest::collection::vec(mutation(), 1..4),
    ) {
        let mut bytes = Vec::new();
        for r in &reqs {
            write_frame(&mut bytes, &encode(r)).unwrap();
        }
        for m in &muts {
            apply(&mut bytes, m);
        }
        decode_stream(&bytes);
        // The payload alone, as a response decoder would meet it.
        let _ = decode_response(bytes.get(4..).unwrap_or(&[]));
    }
}

#[test]
fn deep_nesting_is_a_clean_error() {
    let deep = "[".repeat(100_000);
    assert!(decode_request(deep.as_bytes()).is_err());
    let deep = format!(
        "{{\"op\":\"Hello\",\"version\":1,\"client\":{}}}",
        "[".repeat(10_000)
    );
    assert!(decode_request(deep.as_bytes()).is_err());
}
