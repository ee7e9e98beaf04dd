//! Golden outputs of both ftrace text layouts on the synthetic traces.

mod common;

use livetrace_output::text;

fn render(f: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut out = Vec::new();
    f(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn function_graph_layout() {
    let trace = common::graph_trace();
    let got = render(|out| text::write_function_graph(&trace, out));
    let want = "\
# tracer: function_graph
#
# livetrace: pid 4242 /usr/local/bin/demo demo --fast
# events kept and lost per thread: at the end
#
# TID    DURATION       FUNCTION CALLS
#   |    |   |          |   |   |   |

 ------------------------------------------
 4242)  demo-4242
 ------------------------------------------

 4242)               |  main() {
 4242)               |    parse() {
 4242)   0.500 us    |      lex();
 4242)   0.200 us    |      lex();
 4242) + 25.900 us   |    } /* parse */
 4242)               |    fib() {
 4242)               |      fib() {
 4242)   0.100 us    |        fib();
 4242)   0.050 us    |        fib();
 4242)   0.400 us    |      } /* fib */
 4242)   0.600 us    |    } /* fib */
 4242) ! 200.000 us  |    foo_init();
 4242)   0.100 us    |    leaf();

 ------------------------------------------
 4243)  worker-1-4243
 ------------------------------------------

TID:4243 [LOST 7 EVENTS]
# TID:4243 2 calls deeper than the depth limit not recorded
 4243)               |      } /* lex */
 4243)               |    } /* parse */
 4243)               |    parse() {
 4243)   0.100 us    |      lex();
 4243)   0.300 us    |    } /* parse */
 4243)               |  } /* worker */
 4243)               |  worker() {
 4243)   0.050 us    |    leaf();
 4243)   1.000 us    |  } /* worker */
# TID:4242 still running at the end of the trace: main
#
# entries: 30 in 2 threads, 7 lost
# TID:4242 demo: 19 events, none lost
# TID:4243 worker-1: 11 events, 7 events lost (ring full, oldest events overwritten); 2 calls deeper than the depth limit, not recorded
";
    assert_eq!(got, want, "got:\n{got}");
}

/// A stream's caller is the call open when the entry happened: the worker's
/// first `parse` ran inside a `worker` whose entry was overwritten, which
/// only its later (orphan) exit shows, so it prints without a caller.
#[test]
fn function_layout_of_a_graph_trace() {
    let trace = common::graph_trace();
    let got = render(|out| text::write_function(&trace, out));
    let want = "\
# tracer: function
#
# livetrace: pid 4242 /usr/local/bin/demo demo --fast
# events kept and lost per thread: at the end
#
#           TASK-TID        TIMESTAMP     FUNCTION
#              | |              |            |
TID:4243 [LOST 7 EVENTS]
# TID:4243 2 calls deeper than the depth limit not recorded
            demo-4242     1000.000000000: main
            demo-4242     1000.000000100: parse <-main
            demo-4242     1000.000000200: lex <-parse
        worker-1-4243     1000.000000700: parse
            demo-4242     1000.000000800: lex <-parse
        worker-1-4243     1000.000000800: lex <-parse
        worker-1-4243     1000.000002000: worker
        worker-1-4243     1000.000002100: leaf <-worker
            demo-4242     1000.000026100: fib <-main
            demo-4242     1000.000026200: fib <-fib
            demo-4242     1000.000026300: fib <-fib
            demo-4242     1000.000026500: fib <-fib
            demo-4242     1000.000026800: foo_init <-main
            demo-4242     1000.000227000: leaf <-main
#
# entries: 30 in 2 threads, 7 lost
# TID:4242 demo: 19 events, none lost
# TID:4243 worker-1: 11 events, 7 events lost (ring full, oldest events overwritten); 2 calls deeper than the depth limit, not recorded
";
    assert_eq!(got, want, "got:\n{got}");
}

#[test]
fn function_layout_of_a_function_trace() {
    let trace = common::function_trace();
    let got = render(|out| text::write_function(&trace, out));
    // Callers are return addresses inside the caller; one is in no symbol.
    let want = "\
# tracer: function
#
# livetrace: pid 4242 /usr/local/bin/demo demo
# events kept and lost per thread: at the end
#
#           TASK-TID        TIMESTAMP     FUNCTION
#              | |              |            |
TID:4242 [LOST 3 EVENTS]
            demo-4242     1000.000000000: parse <-main
        worker-1-4243     1000.000001000: leaf <-worker
            demo-4242     1000.000001500: lex <-parse
            demo-4242     1000.002000123: lex <-parse
        worker-1-4243     1000.002500000: leaf <-0xdead0000
            demo-4242     1000.003000000: foo_init <-main
#
# entries: 6 in 2 threads, 3 lost
# TID:4242 demo: 4 events, 3 events lost (ring full, oldest events overwritten)
# TID:4243 worker-1: 2 events, none lost
";
    assert_eq!(got, want, "got:\n{got}");
}

#[test]
fn function_trace_in_graph_layout_prints_calls_as_comments() {
    let mut trace = common::function_trace();
    trace.threads.truncate(1);
    trace.threads[0].name.clear();
    let got = render(|out| text::write_function_graph(&trace, out));
    let body: Vec<&str> = got.lines().skip(8).collect();
    assert_eq!(
        body,
        [
            " ------------------------------------------",
            " 4242)  <...>-4242",
            " ------------------------------------------",
            "",
            "TID:4242 [LOST 3 EVENTS]",
            " 4242)               |  /* parse <-main */",
            " 4242)               |  /* lex <-parse */",
            " 4242)               |  /* lex <-parse */",
            " 4242)               |  /* foo_init <-main */",
            "#",
            "# entries: 4 in 1 threads, 3 lost",
            "# TID:4242 <...>: 4 events, 3 events lost (ring full, oldest events overwritten)",
        ]
    );
}

#[test]
fn lost_exits_mid_trace_and_unknown_symbols() {
    use livetrace_output::{Event, ThreadTrace, Trace};
    let t0 = common::T0;
    let trace = Trace {
        pid: 7,
        program: "/x".into(),
        start_ns: t0,
        threads: vec![ThreadTrace {
            tid: 7,
            name: "x".into(),
            events: vec![
                Event::Entry {
                    ts: t0,
                    func: common::MAIN,
                    depth: 0,
                },
                Event::Entry {
                    ts: t0 + 10,
                    func: 0x1234,
                    depth: 1,
                },
                Event::Entry {
                    ts: t0 + 20,
                    func: common::LEX,
                    depth: 2,
                },
                // lex's exit is lost; 0x1234 returns.
                Event::Exit {
                    ts: t0 + 5_000_000,
                    func: 0x1234,
                    depth: 1,
                },
                Event::Exit {
                    ts: t0 + 2_000_000_000,
                    func: common::MAIN,
                    depth: 0,
                },
            ],
            ..Default::default()
        }],
        symbols: common::symbols(),
        ..Default::default()
    };
    let got = render(|out| text::write_function_graph(&trace, out));
    let body: Vec<&str> = got.lines().skip(12).collect();
    assert_eq!(
        body,
        [
            "   7)               |  main() {",
            "   7)               |    0x1234() {",
            "   7)               |      lex() {",
            "   7) # 4999.990 us |    } /* 0x1234 */",
            "   7) $ 2000000 us  |  } /* main */",
            "#",
            "# entries: 5 in 1 threads, 0 lost",
            "# TID:7 x: 5 events, none lost",
        ],
        "got:\n{got}"
    );
}

#[test]
fn cxx_names_keep_their_own_parameter_list() {
    use livetrace_output::{Event, Symbols, ThreadTrace, Trace};
    let mut symbols = Symbols::default();
    symbols.insert(0x1000, 0, "geo::Circle::scale(int)");
    symbols.insert(0x2000, 0, "geo::Circle::area() const");
    let events = vec![
        Event::Entry {
            ts: 1_000,
            func: 0x1000,
            depth: 0,
        },
        Event::Entry {
            ts: 1_100,
            func: 0x2000,
            depth: 1,
        },
        Event::Exit {
            ts: 1_200,
            func: 0x2000,
            depth: 1,
        },
        Event::Exit {
            ts: 1_500,
            func: 0x1000,
            depth: 0,
        },
    ];
    let trace = Trace {
        pid: 1,
        start_ns: 1_000,
        threads: vec![ThreadTrace {
            tid: 1,
            name: "t".into(),
            events,
            lost: 0,
            depth_overflows: 0,
        }],
        symbols,
        ..Trace::default()
    };
    let mut out = Vec::new();
    livetrace_output::text::write_function_graph(&trace, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("geo::Circle::scale(int) {"), "{text}");
    assert!(text.contains("geo::Circle::area() const;"), "{text}");
    assert!(!text.contains(")()"), "{text}");
}

/// Interleaved threads (a live stream, a recorded file's chunks): each
/// change of thread prints the separator again, a pending entry is printed
/// open before another thread's line, and its exit then closes it with
/// its duration.
#[test]
fn interleaved_threads_print_under_separators() {
    use livetrace_output::{Event, Sink};
    let names = common::symbols();
    let t0 = common::T0;
    let mut w = text::GraphText::new(Vec::new());
    w.begin(&common::graph_trace().process()).unwrap();
    w.thread(1001, "a").unwrap();
    w.thread(1002, "b").unwrap();
    let entry = |ts, func, depth| Event::Entry { ts, func, depth };
    let exit = |ts, func, depth| Event::Exit { ts, func, depth };
    w.event(1001, entry(t0, common::MAIN, 0), &names).unwrap();
    w.event(1001, entry(t0 + 10, common::LEX, 1), &names)
        .unwrap();
    w.event(1002, entry(t0 + 20, common::LEAF, 0), &names)
        .unwrap();
    w.event(1002, exit(t0 + 30, common::LEAF, 0), &names)
        .unwrap();
    w.event(1001, exit(t0 + 40, common::LEX, 1), &names)
        .unwrap();
    w.event(1001, exit(t0 + 50, common::MAIN, 0), &names)
        .unwrap();
    let summary = w.finish(&names).unwrap();
    assert_eq!(summary.events(), 6);
    let got = String::from_utf8(w.into_inner()).unwrap();
    let body: Vec<&str> = got.lines().skip(7).collect();
    assert_eq!(
        body,
        [
            "",
            " ------------------------------------------",
            " 1001)  a-1001",
            " ------------------------------------------",
            "",
            " 1001)               |  main() {",
            " 1001)               |    lex() {",
            "",
            " ------------------------------------------",
            " 1002)  b-1002",
            " ------------------------------------------",
            "",
            " 1002)   0.010 us    |  leaf();",
            "",
            " ------------------------------------------",
            " 1001)  a-1001",
            " ------------------------------------------",
            "",
            " 1001)   0.030 us    |    } /* lex */",
            " 1001)   0.050 us    |  } /* main */",
            "#",
            "# entries: 6 in 2 threads, 0 lost",
            "# TID:1001 a: 4 events, none lost",
            "# TID:1002 b: 2 events, none lost",
        ],
        "got:\n{got}"
    );
}
