use super::*;
use crate::model::Mapping;

#[test]
fn record_word_layout_matches_uftrace() {
    // From a `uftrace record` of a gcc -pg program: entry of 0x559a1bf9b24f
    // at depth 0.
    assert_eq!(word(ENTRY, 0, 0x559a_1bf9_b24f), 0x559a_1bf9_b24f_0028);
    let w = word(EXIT, 3, 0x1234);
    assert_eq!(w & 3, EXIT);
    assert_eq!((w >> 3) & 7, RECORD_MAGIC);
    assert_eq!((w >> 6) & 0x3ff, 3);
    assert_eq!(w >> 16, 0x1234);
    assert_eq!((word(ENTRY, 5000, 1) >> 6) & 0x3ff, 1023);
}

#[test]
fn checksum_is_the_c_char_sum() {
    assert_eq!(path_checksum("/a"), (b'/' as u16) + (b'a' as u16));
    // Bytes >= 0x80 are negative chars on x86-64.
    assert_eq!(
        path_checksum("\u{e9}"),
        (0xc3u8 as i8 as i16 + 0xa9u8 as i8 as i16) as u16
    );
}

#[test]
fn modules_rebase_and_group_unmapped_symbols() {
    let mut trace = Trace {
        maps: vec![
            Mapping {
                start: 0x5000,
                end: 0x6000,
                offset: 0x1000,
                path: "/bin/prog".into(),
            },
            Mapping {
                start: 0x9000,
                end: 0xa000,
                offset: 0,
                path: "/lib/x.so".into(),
            },
        ],
        ..Default::default()
    };
    trace.symbols.insert(0x5100, 0x10, "main");
    trace.symbols.insert(0x9100, 0x10, "xf");
    trace.symbols.insert(0x7000, 0x10, "jit1");
    trace.symbols.insert(0x7100, 0x10, "jit2");
    trace.symbols.insert(0xb000, 0x10, "jit3");
    let mods = modules(&trace.maps, &trace.symbols);
    let summary: Vec<(&str, u64, usize)> = mods
        .iter()
        .map(|m| (m.path, m.base, m.symbols.len()))
        .collect();
    assert_eq!(
        summary,
        [
            ("/bin/prog", 0x4000, 1),
            ("", 0x7000, 2),
            ("/lib/x.so", 0x9000, 1),
            ("", 0xb000, 1)
        ]
    );
}
