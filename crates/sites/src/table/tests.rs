//! Lookups, disambiguators, string compaction and refusal reports, on
//! tables built by hand.

use super::*;

fn table_with(names: &[(usize, &str)]) -> Table {
    let mut t = Table::new();
    t.objects.push(Object {
        id: ObjectId(0),
        dl_name: String::new(),
        path: Some("/bin/test".into()),
        base: 0,
        exec: vec![],
        is_main: true,
        soname: None,
        needed: vec![],
        enabled: 0,
        pin: None,
        error: None,
        relocated: 0,
    });
    let fresh = names
        .iter()
        .map(|&(ip, n)| NewRecord {
            rec: Record::new(ip, ObjectId(0), Origin::Patchable, false),
            name: n.to_owned(),
            raw: if n == "parser::parse_expr" {
                "_ZN6parser10parse_expr17h0123456789abcdefE".into()
            } else {
                n.to_owned()
            },
            file: String::new(),
            line: 0,
            offset: 0,
        })
        .collect();
    t.merge(fresh);
    t
}

#[test]
fn classify_forms() {
    assert_eq!(classify(NOP5), Found::Nop5);
    assert_eq!(classify(NOP1X5), Found::Sled);
    assert_eq!(classify([0x0f, 0x1f, 0x44, 0x00, 0x08]), Found::NopVariant);
    assert_eq!(classify([0xe8, 0, 0, 0, 0]), Found::Other);
    assert_eq!(classify([0x90, 0x90, 0x90, 0x90, 0xc3]), Found::Other);
}

#[test]
fn lookups() {
    let t = table_with(&[
        (0x3000, "parser::parse_expr"),
        (0x1000, "main"),
        (0x2000, "parser::parse_stmt"),
        (0x5000, "my_alloc_zeroed"),
        (0x4000, "__rust_alloc"),
        (0x6000, "helper"),
        (0x7000, "helper"),
    ]);
    // Sorted by address.
    assert!(t.records().windows(2).all(|w| w[0].ip() < w[1].ip()));
    assert_eq!(
        t.find(0x3000).map(|i| t.name(i)),
        Some("parser::parse_expr")
    );
    assert_eq!(t.find(0x3001), None);
    assert_eq!(t.find(0x0fff), None);
    let names = |v: Vec<usize>| {
        v.into_iter()
            .map(|i| t.name(i).to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(t.glob("parser::*")),
        ["parser::parse_stmt", "parser::parse_expr"]
    );
    assert_eq!(
        names(t.glob("*alloc*")),
        ["__rust_alloc", "my_alloc_zeroed"]
    );
    assert_eq!(names(t.glob("m??n")), ["main"]);
    assert!(t.glob("parser::x*").is_empty());
    assert_eq!(t.lookup_name("helper").len(), 2);
    assert_eq!(names(t.lookup_name("main")), ["main"]);
    assert!(t.lookup_name("mai").is_empty());
    // Raw names are found too.
    assert_eq!(
        names(t.lookup_name("_ZN6parser10parse_expr17h0123456789abcdefE")),
        ["parser::parse_expr"]
    );
    assert_eq!(
        t.raw_name(t.find(0x3000).unwrap()),
        "_ZN6parser10parse_expr17h0123456789abcdefE"
    );
    assert_eq!(names(t.glob("*")).len(), 7);
}

/// Three `drop_in_place<x::Bar>` (two hashes, one of them in two
/// objects' worth of records), two C `helper`s (one after `endbr64`),
/// and a unique function.
fn table_with_duplicates() -> Table {
    let mut t = table_with(&[]);
    let drop = "core::ptr::drop_in_place<x::Bar>";
    let raw = |h: &str| format!("_ZN4core3ptr27drop_in_place$LT$x..Bar$GT$17h{h}E");
    let rec = |ip, name: &str, raw: String, offset| NewRecord {
        rec: Record::new(ip, ObjectId(0), Origin::Patchable, false),
        name: name.into(),
        raw,
        file: String::new(),
        line: 0,
        offset,
    };
    t.merge(vec![
        rec(0x1000, drop, raw("1a2b3c4d5e6f7a8b"), 0),
        rec(0x2000, drop, raw("00000000000000ff"), 0),
        rec(0x3000, drop, raw("1a2b3c4d5e6f7a8b") + ".llvm.77", 0),
        rec(0x4000, "helper", "helper".into(), 0),
        rec(0x5004, "helper", "helper".into(), 4),
        rec(0x6000, "unique", "unique".into(), 0),
    ]);
    t
}

#[test]
fn disambiguators_pick_among_same_named_functions() {
    let t = table_with_duplicates();
    let ips = |name: &str| {
        t.lookup_name(name)
            .into_iter()
            .map(|i| t.record(i).ip())
            .collect::<Vec<_>>()
    };
    // A plain name still names them all.
    let drop = "core::ptr::drop_in_place<x::Bar>";
    assert_eq!(ips(drop), [0x1000, 0x2000, 0x3000]);
    assert_eq!(ips("helper"), [0x4000, 0x5004]);
    // The hash picks its instance(s).
    assert_eq!(ips(&format!("{drop}[h00000000000000ff]")), [0x2000]);
    assert_eq!(ips(&format!("{drop}[h1a2b3c4d5e6f7a8b]")), [0x1000, 0x3000]);
    assert_eq!(ips(&format!("{drop}[h1A2B3C4D5E6F7A8B]")), [0x1000, 0x3000]);
    // The address: the site, or the entry before an `endbr64`.
    assert_eq!(ips(&format!("{drop}@0x3000")), [0x3000]);
    assert_eq!(ips("helper@0x4000"), [0x4000]);
    assert_eq!(ips("helper@0x5004"), [0x5004]);
    assert_eq!(ips("helper@0x5000"), [0x5004]);
    // A disambiguator that picks nothing names nothing: no such hash,
    // an address of another function or inside this one, a hash of a
    // C function, or another name.
    assert!(ips(&format!("{drop}[h0000000000000001]")).is_empty());
    assert!(ips("helper@0x6000").is_empty());
    assert!(ips("helper@0x4001").is_empty());
    assert!(ips("helper[h1a2b3c4d5e6f7a8b]").is_empty());
    assert!(ips("helpe@0x4000").is_empty());
    // A unique name takes a disambiguator too; a literal glob is a name.
    assert_eq!(ips("unique@0x6000"), [0x6000]);
    assert_eq!(
        t.glob("helper@0x5000")
            .into_iter()
            .map(|i| t.record(i).ip())
            .collect::<Vec<_>>(),
        [0x5004]
    );
}

#[test]
fn removal_compacts_strings() {
    let mut t = table_with(&[(0x1000, "a"), (0x2000, "b")]);
    t.objects.push(Object {
        id: ObjectId(1),
        ..t.objects[0].clone_for_test()
    });
    t.merge(vec![NewRecord {
        rec: Record::new(0x1800, ObjectId(1), Origin::Macro, false),
        name: "lib::f".into(),
        raw: "lib::f".into(),
        file: "src/lib.rs".into(),
        line: 7,
        offset: 0,
    }]);
    assert_eq!(t.len(), 3);
    let i = t.find(0x1800).unwrap();
    assert_eq!(t.info(i).file, Some("src/lib.rs"));
    assert_eq!(t.info(i).line, Some(7));
    t.remove_objects(&[ObjectId(1)]);
    assert_eq!(t.len(), 2);
    assert_eq!(t.arena, "ab");
    assert!(t.lookup_name("lib::f").is_empty());
    assert_eq!(t.lookup_name("b"), vec![1]);
}

impl Object {
    fn clone_for_test(&self) -> Object {
        Object {
            id: self.id,
            dl_name: self.dl_name.clone(),
            path: self.path.clone(),
            base: self.base,
            exec: self.exec.clone(),
            is_main: self.is_main,
            soname: None,
            needed: vec![],
            enabled: 0,
            pin: None,
            error: None,
            relocated: 0,
        }
    }
}

#[test]
fn rejected_report_names_address_symbol_and_bytes() {
    let r = Rejected {
        addr: 0x7f00_0000_1130,
        object: "/tmp/libbad.so".into(),
        symbol: Some("weird".into()),
        found: Some([0xe8, 0x01, 0x02, 0x03, 0x04]),
        reason: RejectReason::UnexpectedBytes,
    };
    let s = r.to_string();
    assert!(s.contains("0x7f0000001130"), "{s}");
    assert!(s.contains("<weird>"), "{s}");
    assert!(s.contains("/tmp/libbad.so"), "{s}");
    assert!(s.contains("found e8 01 02 03 04"), "{s}");
}
