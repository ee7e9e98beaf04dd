//! Profile rows are exact on the hand-computed example in `common`.

mod common;

use livetrace_output::{profile, ProfileRow};

fn row(name: &str, calls: u64, total: u64, self_ns: u64, min: u64, max: u64) -> ProfileRow {
    ProfileRow {
        name: name.into(),
        calls,
        total_ns: total,
        self_ns,
        min_ns: min,
        max_ns: max,
    }
}

#[test]
fn rows_are_exact() {
    let rows = profile::compute(&common::graph_trace());
    // main never returned: left out. Orphan exits (worker's first lex,
    // parse and worker) have no duration: left out.
    assert_eq!(
        rows,
        [
            row("foo_init", 1, 200_000, 200_000, 200_000, 200_000),
            // 25.9 us (self 25.9 - 0.5 - 0.2) + 0.3 us (self 0.3 - 0.1)
            row("parse", 2, 26_200, 25_400, 300, 25_900),
            row("worker", 1, 1_000, 950, 1_000, 1_000),
            row("lex", 3, 800, 800, 100, 500),
            // fib(600) > fib(400) > {fib(100), fib(50)}: only the outermost
            // counts towards total; self is 200 + 250 + 100 + 50.
            row("fib", 4, 600, 600, 50, 600),
            row("leaf", 2, 150, 150, 50, 100),
        ]
    );
}

#[test]
fn function_tracer_calls_are_counted() {
    let rows = profile::compute(&common::function_trace());
    assert_eq!(
        rows,
        [
            row("leaf", 2, 0, 0, 0, 0),
            row("lex", 2, 0, 0, 0, 0),
            row("foo_init", 1, 0, 0, 0, 0),
            row("parse", 1, 0, 0, 0, 0),
        ]
    );
}

#[test]
fn mutual_recursion_counts_total_once_per_function() {
    use livetrace_output::{Event, ThreadTrace, Trace};
    let (a, b) = (common::PARSE, common::LEX);
    let t = common::T0;
    let ev = |kind: u8, dt: u64, func: u64, depth: u32| match kind {
        0 => Event::Entry {
            ts: t + dt,
            func,
            depth,
        },
        _ => Event::Exit {
            ts: t + dt,
            func,
            depth,
        },
    };
    // a(0..100) > b(10..90) > a(20..80) > b(30..70)
    let trace = Trace {
        start_ns: t,
        threads: vec![ThreadTrace {
            tid: 1,
            events: vec![
                ev(0, 0, a, 0),
                ev(0, 10, b, 1),
                ev(0, 20, a, 2),
                ev(0, 30, b, 3),
                ev(1, 70, b, 3),
                ev(1, 80, a, 2),
                ev(1, 90, b, 1),
                ev(1, 100, a, 0),
            ],
            ..Default::default()
        }],
        symbols: common::symbols(),
        ..Default::default()
    };
    assert_eq!(
        profile::compute(&trace),
        [
            row("parse", 2, 100, 20 + 20, 60, 100),
            row("lex", 2, 80, 20 + 40, 40, 80),
        ]
    );
}

#[test]
fn table_layout() {
    let mut rows = profile::compute(&common::graph_trace());
    rows.reverse(); // write_table sorts by itself
    rows.push(row(
        "a_very_long_function_name::<T>",
        1,
        3_000_000_000_000,
        1,
        2,
        3_000_000_000_000,
    ));
    let mut out = Vec::new();
    profile::write_table(&rows, &mut out).unwrap();
    let got = String::from_utf8(out).unwrap();
    // (A string continuation would eat the header's leading spaces.)
    let want = [
        "  Total time   Self time       Calls   Total min   Total max  Function",
        "  ==========  ==========  ==========  ==========  ==========  ====================",
        "  3000.000 s        1 ns           1        2 ns  3000.000 s  a_very_long_function_name::<T>",
        "  200.000 us  200.000 us           1  200.000 us  200.000 us  foo_init",
        "   26.200 us   25.400 us           2      300 ns   25.900 us  parse",
        "    1.000 us      950 ns           1    1.000 us    1.000 us  worker",
        "      800 ns      800 ns           3      100 ns      500 ns  lex",
        "      600 ns      600 ns           4       50 ns      600 ns  fib",
        "      150 ns      150 ns           2       50 ns      100 ns  leaf",
        "",
    ]
    .join("\n");
    assert_eq!(got, want, "got:\n{got}");
}

#[test]
fn columns_widen_for_long_values() {
    let rows = [row(
        "slow",
        1,
        12_345_000_000_000,
        12_345_000_000_000,
        1,
        12_345_000_000_000,
    )];
    let mut out = Vec::new();
    profile::write_table(&rows, &mut out).unwrap();
    let got = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(
        lines[0],
        "   Total time    Self time       Calls   Total min    Total max  Function"
    );
    assert_eq!(
        lines[2],
        "  12345.000 s  12345.000 s           1        1 ns  12345.000 s  slow"
    );
    assert_eq!(lines[0].find("Function"), lines[2].find("slow"));
}
