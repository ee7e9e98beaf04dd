//! Folded stacks parse as `stack weight` lines whose totals match the
//! profile, and inferno draws them.

mod common;

use std::collections::BTreeMap;

use livetrace_output::folded::{self, Weight};
use livetrace_output::profile;

fn parse(text: &str) -> BTreeMap<String, u64> {
    let mut stacks = BTreeMap::new();
    for line in text.lines() {
        let (stack, weight) = line.rsplit_once(' ').expect("`stack weight`");
        assert!(!stack.is_empty() && !stack.contains(";;"), "{line}");
        let weight: u64 = weight.parse().expect("integer weight");
        assert!(weight > 0, "{line}");
        assert!(
            stacks.insert(stack.to_string(), weight).is_none(),
            "duplicate {stack}"
        );
    }
    stacks
}

fn folded_text(trace: &livetrace_output::Trace) -> (Weight, String) {
    let mut out = Vec::new();
    let weight = folded::write(trace, &mut out).unwrap();
    (weight, String::from_utf8(out).unwrap())
}

#[test]
fn self_time_stacks() {
    let trace = common::graph_trace();
    let (weight, text) = folded_text(&trace);
    assert_eq!(weight, Weight::SelfTime);
    let stacks = parse(&text);
    let want: BTreeMap<String, u64> = [
        ("main;fib", 200),
        ("main;fib;fib", 250),
        ("main;fib;fib;fib", 150),
        ("main;foo_init", 200_000),
        ("main;leaf", 100),
        ("main;parse", 25_200),
        ("main;parse;lex", 700),
        // worker's stack was rebuilt from the orphan exits it began with.
        ("worker", 950),
        ("worker;leaf", 50),
        ("worker;parse", 200),
        ("worker;parse;lex", 100),
    ]
    .into_iter()
    .map(|(s, w)| (s.to_string(), w))
    .collect();
    assert_eq!(stacks, want);

    // Self time adds up the same way in the profile.
    let total: u64 = stacks.values().sum();
    let profile_self: u64 = profile::compute(&trace).iter().map(|r| r.self_ns).sum();
    assert_eq!(total, profile_self);
    // Per function, the self time of stacks ending in it is its row's.
    for row in profile::compute(&trace) {
        let leafs: u64 = stacks
            .iter()
            .filter(|(s, _)| s.rsplit(';').next() == Some(row.name.as_str()))
            .map(|(_, w)| w)
            .sum();
        assert_eq!(leafs, row.self_ns, "{}", row.name);
    }
}

#[test]
fn call_count_stacks() {
    let trace = common::function_trace();
    let (weight, text) = folded_text(&trace);
    assert_eq!(weight, Weight::Calls);
    let stacks = parse(&text);
    let want: BTreeMap<String, u64> = [
        ("0xdead0000;leaf", 1),
        ("main;foo_init", 1),
        ("main;parse", 1),
        ("parse;lex", 2),
        ("worker;leaf", 1),
    ]
    .into_iter()
    .map(|(s, w)| (s.to_string(), w))
    .collect();
    assert_eq!(stacks, want);
    let events: usize = trace.threads.iter().map(|t| t.events.len()).sum();
    assert_eq!(stacks.values().sum::<u64>(), events as u64);

    // A graph trace counted in calls: one per Entry, on its stack.
    let graph = folded::stacks(&common::graph_trace(), Weight::Calls);
    assert_eq!(graph["main"], 1);
    assert_eq!(graph["main;fib;fib;fib"], 2);
    assert_eq!(graph["worker;parse;lex"], 1);
    assert_eq!(graph.values().sum::<u64>(), 14);
}

#[test]
fn semicolons_in_names_do_not_split_frames() {
    let mut trace = common::graph_trace();
    trace
        .symbols
        .insert(common::LEX, 0x40, "<[u8; 4] as lex::Lex>::lex");
    let stacks = folded::stacks(&trace, Weight::SelfTime);
    assert_eq!(stacks["main;parse;<[u8, 4] as lex::Lex>::lex"], 700);
}

#[test]
fn inferno_draws_an_svg() {
    let mut svg = Vec::new();
    folded::flamegraph(&common::graph_trace(), &mut svg).unwrap();
    let svg = String::from_utf8(svg).unwrap();
    assert!(svg.starts_with("<?xml"), "{}", &svg[..100.min(svg.len())]);
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("demo (pid 4242): time"));
    for name in ["main", "parse", "foo_init", "worker"] {
        assert!(
            svg.contains(&format!("<title>{name} (")),
            "no frame for {name}"
        );
    }
    // foo_init holds 200000 of the 227900 ns.
    assert!(
        svg.contains("<title>foo_init (200,000 ns, 87.76%)</title>"),
        "{svg}"
    );

    let mut svg = Vec::new();
    folded::flamegraph(&common::function_trace(), &mut svg).unwrap();
    let svg = String::from_utf8(svg).unwrap();
    assert!(
        svg.contains("<title>lex (2 calls, 33.33%)</title>"),
        "{svg}"
    );

    let mut empty = common::graph_trace();
    empty.threads.clear();
    let err = folded::flamegraph(&empty, &mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}
