//! Round trips, frame bounds and request validation.

use super::*;

#[test]
fn requests_round_trip_and_look_like_json() {
    let r = Request::StartTrace {
        tracer: TracerKind::Graph,
        filter: vec!["app::*".into()],
        notrace: vec![],
        buffer_records: Some(1024),
        mode: Some(Mode::Stream),
        memory_budget: None,
        controls: Controls::default(),
        no_relocate: false,
    };
    let bytes = encode(&r);
    assert_eq!(
        std::str::from_utf8(&bytes).unwrap(),
        r#"{"op":"StartTrace","tracer":"graph","filter":["app::*"],"notrace":[],"buffer_records":1024,"mode":"stream","memory_budget":null,"controls":{"depth":null,"min_duration_ns":null,"start_at":[],"stop_at":[],"snapshot_at":[]}}"#
    );
    assert_eq!(decode_request(&bytes).unwrap(), r);
    // The new fields may be left out.
    let old = br#"{"op":"StartTrace","tracer":"graph","filter":["app::*"],"notrace":[],"buffer_records":1024}"#;
    assert!(matches!(
        decode_request(old).unwrap(),
        Request::StartTrace { mode: None, .. }
    ));
    assert_eq!(decode_request(br#"{"op":"Ping"}"#).unwrap(), Request::Ping);
    assert!(decode_request(br#"{"op":"Revert","patch":1,"addr":2}"#).is_err());
    assert!(decode_request(br#"{"op":"Poke","addr":1}"#).is_err());
}

#[test]
fn frames_are_bounded() {
    let mut buf = Vec::new();
    write_frame(&mut buf, b"hello").unwrap();
    assert_eq!(&buf[..4], &5u32.to_le_bytes());
    assert_eq!(read_frame(&mut &buf[..], 16).unwrap(), b"hello");
    assert!(matches!(
        read_frame(&mut &buf[..], 4),
        Err(FrameError::TooLarge(5))
    ));
    assert!(matches!(
        read_frame(&mut &buf[..6], 16),
        Err(FrameError::Truncated)
    ));
    assert!(matches!(
        read_frame(&mut &buf[..0], 16),
        Err(FrameError::Closed)
    ));
    let huge = u32::MAX.to_le_bytes();
    assert!(matches!(
        read_frame(&mut &huge[..], MAX_FRAME),
        Err(FrameError::TooLarge(_))
    ));
}

#[test]
fn validation_catches_what_decoding_cannot() {
    let start = |n| Request::StartTrace {
        tracer: TracerKind::Function,
        filter: vec!["a".into()],
        notrace: vec![],
        buffer_records: Some(n),
        mode: None,
        memory_budget: None,
        controls: Controls::default(),
        no_relocate: false,
    };
    assert!(start(1024).validate().is_ok());
    assert!(start(1000).validate().is_err());
    assert!(start(2).validate().is_err());
    assert!(start(1 << 40).validate().is_err());
    let with = |tracer, controls: Controls, mode| Request::StartTrace {
        tracer,
        filter: vec!["a".into()],
        notrace: vec![],
        buffer_records: None,
        mode,
        memory_budget: None,
        controls,
        no_relocate: false,
    };
    let depth = Controls {
        depth: Some(3),
        ..Controls::default()
    };
    assert!(with(TracerKind::Graph, depth.clone(), None)
        .validate()
        .is_ok());
    assert!(with(TracerKind::Function, depth, None).validate().is_err());
    let zero = Controls {
        depth: Some(0),
        ..Controls::default()
    };
    assert!(with(TracerKind::Graph, zero, None).validate().is_err());
    let snap = Controls {
        snapshot_at: vec!["f".into()],
        ..Controls::default()
    };
    assert!(with(TracerKind::Graph, snap.clone(), Some(Mode::Stream))
        .validate()
        .is_err());
    assert!(with(TracerKind::Graph, snap, Some(Mode::Flight))
        .validate()
        .is_ok());
    let list = |g: String| Request::ListFunctions {
        glob: Some(g),
        enabled_only: false,
    };
    assert!(list("*".repeat(MAX_NAME)).validate().is_ok());
    assert!(list("*".repeat(MAX_NAME + 1)).validate().is_err());
}
