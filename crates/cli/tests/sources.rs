//! Where functions are in their source, from a C program's debug
//! information, reaches every output with a place for it: the recording's
//! SOURCES block, uftrace's `.dbg` files (the real `uftrace replay
//! --srcline` shows `file.c:LINE`) and Perfetto's interned source
//! locations, for functions in the executable and in a library.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::{preload_lib, TempDir, CLI};
use livetrace_format::Reader;

fn progs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs")
}

/// `gcc -g -O1` with sites, `libs` after the source.
fn gcc(args: &[&str], out: &Path, src: &str, libs: &[&str]) {
    let o = Command::new("gcc")
        .args(["-g", "-O1", "-fpatchable-function-entry=5"])
        .args(args)
        .arg("-o")
        .arg(out)
        .arg(progs().join(src))
        .args(libs)
        .output()
        .expect("gcc");
    assert!(
        o.status.success(),
        "gcc {src}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `located`, linked with `liblocated.so`, both with debug information.
fn program() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("located-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        gcc(
            &["-fPIC", "-shared"],
            &dir.join("liblocated.so"),
            "located_lib.c",
            &[],
        );
        let lib = format!("-L{}", dir.display());
        let rpath = format!("-Wl,-rpath,{}", dir.display());
        let libs = [lib.as_str(), rpath.as_str(), "-llocated"];
        gcc(&[], &dir.join("located"), "located.c", &libs);
        dir.join("located")
    })
}

/// The line of `src` holding `/* LINE:name */`.
fn line_of(src: &str, name: &str) -> u32 {
    let text = std::fs::read_to_string(progs().join(src)).unwrap();
    let marker = format!("/* LINE:{name} */");
    let i = text
        .lines()
        .position(|l| l.contains(&marker))
        .unwrap_or_else(|| panic!("no {marker} in {src}"));
    i as u32 + 1
}

fn livetrace(sockets: &Path, args: &[&str]) -> String {
    let o = Command::new(CLI)
        .args(args)
        .env("LIVETRACE_PRELOAD_LIB", preload_lib())
        .env("LIVETRACE_SOCKET_DIR", sockets)
        .env_remove("LD_PRELOAD")
        .env_remove("LIVETRACE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "livetrace {args:?}: {stderr}");
    String::from_utf8_lossy(&o.stdout).into_owned() + &stderr
}

fn have(cmd: &str, test: &str) -> bool {
    let ok = Command::new(cmd)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test} ({cmd} part): {cmd} is not on PATH"
        );
    }
    ok
}

#[test]
fn recorded_c_functions_carry_file_and_line_into_every_output() {
    let test = "recorded_c_functions_carry_file_and_line_into_every_output";
    let dir = TempDir::new("srcloc");
    std::fs::create_dir_all(dir.path()).unwrap();
    let rec = dir.path().join("located.lttrace");
    let exe = program().to_str().unwrap();
    let out = livetrace(
        dir.path(),
        &[
            "record",
            "-t",
            "graph",
            "-f",
            "loc_*",
            "-o",
            rec.to_str().unwrap(),
            "--",
            exe,
            "4",
        ],
    );
    assert!(out.contains("LOCATED sink=6"), "{out}");
    let want = [
        ("loc_leaf", "located.c"),
        ("loc_outer", "located.c"),
        ("loc_lib", "located_lib.c"),
    ];

    // The recording: one location per traced function, from DWARF.
    let r = Reader::open(&rec).unwrap();
    for (name, src) in want {
        let sym = r
            .symbols()
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no symbol {name}"));
        let loc = r
            .locations()
            .iter()
            .find(|l| l.addr == sym.addr)
            .unwrap_or_else(|| panic!("no location for {name}: {:?}", r.locations()));
        let file = progs().join(src);
        assert_eq!(
            (Path::new(&loc.file), loc.line),
            (file.as_path(), line_of(src, name)),
            "{name}"
        );
    }

    // uftrace: `replay --srcline` comments each call with its file:line.
    let data = dir.path().join("located.uftrace.data");
    livetrace(
        dir.path(),
        &[
            "convert",
            rec.to_str().unwrap(),
            "-o",
            data.to_str().unwrap(),
        ],
    );
    if have("uftrace", test) {
        let o = Command::new("uftrace")
            .args(["replay", "--srcline", "--no-pager", "-d"])
            .arg(&data)
            .output()
            .unwrap();
        let replay = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{replay}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        for (name, src) in want {
            let tail = format!("{src}:{} */", line_of(src, name));
            assert!(
                replay
                    .lines()
                    .any(|l| l.contains(&format!("{name}(")) && l.ends_with(&tail)),
                "no {name} ... {tail} in\n{replay}"
            );
        }
    }

    // Perfetto: interned source locations, referenced by the slices.
    let pf = dir.path().join("located.perfetto-trace");
    livetrace(
        dir.path(),
        &["convert", rec.to_str().unwrap(), "-o", pf.to_str().unwrap()],
    );
    let bytes = std::fs::read(&pf).unwrap();
    if have("protoc", test) {
        let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../output/tests/data");
        let mut child = Command::new("protoc")
            .arg("--decode=perfetto.protos.Trace")
            .arg("-I")
            .arg(&proto)
            .arg("perfetto_trace.proto")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let feed = std::thread::spawn(move || stdin.write_all(&bytes));
        let o = child.wait_with_output().unwrap();
        feed.join().unwrap().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout);
        // Each `source_locations { iid file_name function_name line_number }`.
        let locs: Vec<(String, String, u32)> = text
            .split("source_locations {")
            .skip(1)
            .map(|block| {
                let block = &block[..block.find('}').unwrap()];
                let field = |k: &str| {
                    block
                        .lines()
                        .find_map(|l| l.trim().strip_prefix(k)?.strip_prefix(": "))
                        .unwrap_or_else(|| panic!("no {k} in {block}"))
                        .trim_matches('"')
                        .to_string()
                };
                (
                    field("function_name"),
                    field("file_name"),
                    field("line_number").parse().unwrap(),
                )
            })
            .collect();
        for (name, src) in want {
            let file = progs().join(src).display().to_string();
            assert!(
                locs.contains(&(name.to_string(), file.clone(), line_of(src, name))),
                "no {name} at {file}:{} in {locs:?}",
                line_of(src, name)
            );
        }
        assert_eq!(locs.len(), want.len(), "each interned once: {locs:?}");
        assert!(text.contains("source_location_iid: "), "{text:.2000}");
    } else {
        let file = progs().join("located.c").display().to_string();
        assert!(
            bytes.windows(file.len()).any(|w| w == file.as_bytes()),
            "no {file} in the protobuf"
        );
    }
}

/// A `#[traced]` function's location is the one the process reports (as
/// `ls` shows it): the macro's site stub, where its events are, has no
/// line of its own in the debug information.
#[test]
fn traced_functions_carry_the_location_the_process_reports() {
    let t = common::Target::start();
    let pid = t.pid_s();
    let dir = TempDir::new("srcloc-rs");
    std::fs::create_dir_all(dir.path()).unwrap();
    let rec = dir.path().join("demo.lttrace");
    t.ok(&[
        "trace",
        &pid,
        "-f",
        "*::compute",
        "-d",
        "200ms",
        "-o",
        rec.to_str().unwrap(),
    ]);
    let src = "crates/cli/src/bin/demo_target.rs";
    let text = std::fs::read_to_string(common::workspace().join(src)).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("fn compute(x: u64)"))
        .expect("fn compute in the demo target") as u32
        + 1;
    let ls = t.ok(&["ls", &pid, "*::compute"]);
    assert!(ls.contains(&format!(" {src}:{line}")), "{ls}");

    let r = Reader::open(&rec).unwrap();
    let sym = r
        .symbols()
        .iter()
        .find(|s| s.name.ends_with("::compute"))
        .expect("compute named");
    let loc = r
        .locations()
        .iter()
        .find(|l| l.addr == sym.addr)
        .unwrap_or_else(|| panic!("no location for compute: {:?}", r.locations()));
    assert_eq!((loc.file.as_str(), loc.line), (src, line));
}
