//! Prologue shapes compiled by gcc and clang at -O0/-O2/-Os, with and
//! without `-fcf-protection`, plus hand-written assembly: each function is
//! classified as expected, agrees with objdump's view of its branches, and,
//! when relocated, runs with the same results as an unpatched copy while
//! its detour counts every call.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::exec::{copy_of, objdump, patch_all, Loaded};
use livetrace_reloc::{Fixup, Image, Refusal};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

const A: [i64; 11] = [
    0,
    1,
    2,
    -1,
    7,
    100,
    12345,
    -100_000,
    1 << 40,
    -(1 << 33),
    123_456_789,
];
const B: [i64; 5] = [0, 5, -3, 1000, -6789];

/// Exported `long f(long, long)` functions of shapes.c.
const C_CALLABLE: &[&str] = &[
    "rip_first",
    "rip_table",
    "float_const",
    "tiny_zero",
    "tiny_first",
    "tiny_sum",
    "short_branch",
    "loop_into_prologue",
    "frame_vla",
    "call_first",
    "tail_call",
    "via_hook",
    "switch_table",
    "loop_count",
    "tail_recursive",
    "cold_path",
    "big_frame",
    "tls_add",
];

/// Exported `long f(long, long)` functions of shapes.S.
const ASM_CALLABLE: &[&str] = &[
    "asm_rip_lea",
    "asm_rip_cmp_imm",
    "asm_jmp_first",
    "asm_internal_loop",
    "asm_entry_loop",
    "asm_loop_insn",
    "asm_jrcxz",
    "asm_call_first",
    "asm_icall_rip",
    "asm_rip_jmp",
    "asm_jtable_ok",
    "asm_endbr",
    "asm_short_pad",
    "asm_alt_inner",
    "asm_after_short",
];

enum Expect {
    /// Relocatable, with exactly these fixups.
    Fixups(&'static [Fixup]),
    /// Relocatable (fixups depend on padding).
    Relocatable,
    /// Refused with this kind.
    Refused(&'static str),
}

use Fixup::*;

/// The hand-written shapes: the same in every build.
const ASM_EXPECT: &[(&str, Expect)] = &[
    ("asm_helper", Expect::Fixups(&[Copied, Copied])),
    ("asm_rip_lea", Expect::Fixups(&[RipRelative])),
    ("asm_rip_cmp_imm", Expect::Fixups(&[RipRelative])),
    (
        "asm_jmp_first",
        Expect::Fixups(&[Branch, Copied, Copied, Copied]),
    ),
    (
        "asm_internal_loop",
        Expect::Fixups(&[Copied, Copied, BranchInside]),
    ),
    (
        "asm_entry_loop",
        Expect::Fixups(&[Copied, BranchInside, Copied]),
    ),
    ("asm_loop_insn", Expect::Fixups(&[Copied, LoopRewritten])),
    ("asm_jrcxz", Expect::Fixups(&[Copied, LoopRewritten])),
    ("asm_call_first", Expect::Fixups(&[CallEmulated])),
    ("asm_icall_rip", Expect::Fixups(&[CallEmulated])),
    ("asm_rip_jmp", Expect::Fixups(&[RipRelative])),
    ("asm_jtable_ok", Expect::Fixups(&[Copied, Copied])),
    ("asm_endbr", Expect::Fixups(&[RipRelative])),
    ("asm_short_pad", Expect::Relocatable),
    ("asm_alt_inner", Expect::Fixups(&[Copied, Copied])),
    ("asm_after_short", Expect::Relocatable),
    ("asm_alt_inner_host", Expect::Refused("symbol-in-region")),
    ("asm_icall_reg_mid", Expect::Refused("call-not-last")),
    ("asm_call_stack", Expect::Refused("call-through-stack")),
    ("asm_syscall", Expect::Refused("syscall")),
    ("asm_int3", Expect::Refused("trap")),
    ("asm_xbegin", Expect::Refused("xbegin")),
    ("asm_into_region", Expect::Refused("branch-into-region")),
    ("asm_body_to_entry", Expect::Refused("branch-to-entry")),
    (
        "asm_jtable_region",
        Expect::Refused("jump-table-into-region"),
    ),
    ("asm_addr_taken", Expect::Refused("address-taken-in-region")),
    ("asm_fde_split", Expect::Refused("fde-in-region")),
    ("asm_lp_region", Expect::Refused("landing-pad-in-region")),
    ("asm_short", Expect::Refused("too-short")),
    ("asm_sigtramp", Expect::Refused("signal-trampoline")),
    ("asm_outermost", Expect::Refused("outermost")),
    ("asm_mid_frame", Expect::Refused("mid-frame")),
    ("asm_mid_frame.cold", Expect::Refused("cold-part")),
];

fn out_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("reloc-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn compile(compiler: &str, args: &[&str], sources: &[&str], out: &Path) {
    let mut cmd = Command::new(compiler);
    cmd.args(["-shared", "-fPIC", "-o"]).arg(out).args(args);
    for s in sources {
        cmd.arg(Path::new(FIXTURES).join(s));
    }
    let o = cmd.output().unwrap_or_else(|e| panic!("{compiler}: {e}"));
    assert!(
        o.status.success(),
        "{compiler} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Checks every verdict against objdump's independent decoding: the region
/// ends on an instruction boundary (the first one ≥ site+5), nothing
/// outside it branches into it, no jump in the body goes back to the
/// entry; and each branch a refusal names is one objdump sees.
fn agree_with_objdump(path: &Path, image: &Image) {
    let od = objdump(path);
    for c in image.candidates() {
        match &c.verdict {
            Ok(p) => {
                let (site, end) = (p.site(), p.site() + p.len() as u64);
                for b in p.boundaries() {
                    assert!(
                        od.boundaries.contains(&b),
                        "{}: {b:#x} is not an instruction start",
                        c.name()
                    );
                }
                // The region ends at the first boundary at or past site+5
                // (or at the function's end, the last instruction of a
                // section, which objdump lists no boundary after).
                let first = od.boundaries.range(site + 5..).next().copied();
                let at_end =
                    end == c.addr + c.size && od.boundaries.range(site + 5..end).next().is_none();
                assert!(
                    first == Some(end) || at_end,
                    "{}: region [{site:#x}, {end:#x}) is not minimal (next boundary {first:x?})",
                    c.name()
                );
                for &(from, to, call) in &od.branches {
                    let internal = (site..end).contains(&from);
                    assert!(
                        internal || !(to > site && to < end),
                        "{}: objdump sees {from:#x} -> {to:#x} into the region [{site:#x}, {end:#x})",
                        c.name()
                    );
                    let own = (c.addr..c.addr + c.size).contains(&from);
                    assert!(
                        internal || call || !own || !(c.addr..=site).contains(&to),
                        "{}: objdump sees {from:#x} -> {to:#x} back to the entry",
                        c.name()
                    );
                }
            }
            Err(Refusal::BranchIntoRegion { from, target }) => {
                assert!(
                    od.branches.iter().any(|b| (b.0, b.1) == (*from, *target)),
                    "{}: {from:#x} -> {target:#x}",
                    c.name()
                );
            }
            Err(Refusal::BranchToEntry { from }) => {
                assert!(
                    od.branches.iter().any(|&(f, t, call)| !call
                        && f == *from
                        && (c.addr..c.addr + 8).contains(&t)),
                    "{}: {from:#x}",
                    c.name()
                );
            }
            Err(_) => {}
        }
    }
}

fn check_asm_expectations(image: &Image, what: &str) {
    for (name, expect) in ASM_EXPECT {
        let c = image
            .find(name)
            .unwrap_or_else(|| panic!("{what}: {name} missing"));
        match (expect, &c.verdict) {
            (Expect::Fixups(f), Ok(p)) => {
                let got: Vec<Fixup> = p.fixups().into_iter().map(|x| x.1).collect();
                assert_eq!(&got, f, "{what}: {name}");
            }
            (Expect::Relocatable, Ok(_)) => {}
            (Expect::Refused(kind), Err(r)) => assert_eq!(r.kind(), *kind, "{what}: {name}: {r}"),
            (_, v) => panic!("{what}: {name}: unexpected {v:?}"),
        }
    }
    let p = image.find("asm_endbr").unwrap().verdict.as_ref().unwrap();
    assert!(p.after_endbr(), "{what}: the site follows endbr64");
    let c = image.find("asm_short_pad").unwrap();
    assert!(
        c.verdict.as_ref().unwrap().len() as u64 > c.size,
        "{what}: padding used"
    );
}

/// What the whole matrix must have exercised at least once.
#[derive(Default, Debug)]
struct Seen {
    fixups: BTreeMap<String, usize>,
    refusals: BTreeMap<&'static str, usize>,
    after_endbr: usize,
    padding: usize,
    calls_counted: u64,
}

/// Relocates every relocatable function of one copy, calls every callable
/// function of both copies with the same inputs, and compares.
fn run_both(path: &Path, image: &Image, callable: &[&str], what: &str, seen: &mut Seen) {
    let a = Loaded::open(&copy_of(path, "patched"), image, callable[0]);
    let b = Loaded::open(&copy_of(path, "reference"), image, callable[0]);
    assert_ne!(a.bias, b.bias);
    let patched = patch_all(image, &a);
    for name in callable {
        let (fa, fb) = (a.f2(name), b.f2(name));
        let mut calls = 0;
        for x in A {
            for y in B {
                assert_eq!(fa(x, y), fb(x, y), "{what}: {name}({x}, {y})");
                calls += 1;
            }
        }
        if let Some(n) = patched.count(name) {
            assert_eq!(
                n, calls,
                "{what}: {name}: every call went through its detour's site"
            );
            seen.calls_counted += n;
        }
    }
    // The object's own finalisers run through their detours too.
    // SAFETY: nothing of copy `a` is referenced any more.
    assert_eq!(unsafe { libc::dlclose(a.handle) }, 0);
    if let Some(n) = patched.count("_fini") {
        assert_eq!(n, 1, "{what}: _fini ran once, through its detour");
    }
    drop(patched);
    // SAFETY: as above for `b`, which was never patched.
    assert_eq!(unsafe { libc::dlclose(b.handle) }, 0);
    let _ = std::fs::remove_file(&a.path);
    let _ = std::fs::remove_file(&b.path);
}

fn matrix(compiler: &str) {
    let dir = out_dir();
    let mut seen = Seen::default();
    for opt in ["-O0", "-O2", "-Os"] {
        for cf in [false, true] {
            let what = format!(
                "{compiler} {opt}{}",
                if cf { " -fcf-protection" } else { "" }
            );
            let out = dir.join(format!(
                "shapes-{compiler}{opt}{}.so",
                if cf { "-cf" } else { "" }
            ));
            let mut args = vec![opt];
            if cf {
                args.push("-fcf-protection=full");
            }
            compile(compiler, &args, &["shapes.c", "shapes.S"], &out);
            let image = Image::parse(&std::fs::read(&out).unwrap()).unwrap();
            check_asm_expectations(&image, &what);
            agree_with_objdump(&out, &image);
            for name in C_CALLABLE {
                let c = image
                    .find(name)
                    .unwrap_or_else(|| panic!("{what}: {name} missing"));
                match &c.verdict {
                    Ok(p) => {
                        assert_eq!(
                            p.after_endbr(),
                            cf,
                            "{what}: {name}: endbr64 iff -fcf-protection"
                        );
                        for (_, f) in p.fixups() {
                            *seen.fixups.entry(f.to_string()).or_default() += 1;
                        }
                        seen.after_endbr += p.after_endbr() as usize;
                        seen.padding += (p.site() + p.len() as u64 > c.addr + c.size) as usize;
                    }
                    Err(r) => {
                        *seen.refusals.entry(r.kind()).or_default() += 1;
                        // Only these shapes may be refused, and only for
                        // reasons that are theirs.
                        let ok = match *name {
                            "loop_into_prologue" | "tail_recursive" | "loop_count" => {
                                matches!(r.kind(), "branch-into-region" | "branch-to-entry")
                            }
                            "tiny_zero" | "tiny_first" => r.kind() == "too-short" && opt == "-Os",
                            _ => false,
                        };
                        assert!(ok, "{what}: {name} refused: {r}");
                    }
                }
            }
            if compiler == "gcc" && opt == "-O2" {
                let cold = image
                    .find("cold_path.cold")
                    .expect("gcc splits the cold path");
                assert_eq!(cold.verdict.as_ref().unwrap_err(), &Refusal::ColdPart);
            }
            let callable: Vec<&str> = C_CALLABLE.iter().chain(ASM_CALLABLE).copied().collect();
            run_both(&out, &image, &callable, &what, &mut seen);
            let _ = std::fs::remove_file(&out);
        }
    }
    eprintln!("{compiler}: {seen:?}");
    for f in ["rip-relative", "branch", "call-emulated", "copied"] {
        assert!(
            seen.fixups.contains_key(f),
            "{compiler}: the C shapes produced no {f} fixup"
        );
    }
    assert!(
        seen.after_endbr > 0 && seen.padding > 0,
        "{compiler}: {seen:?}"
    );
    assert!(seen.calls_counted > 0);
}

#[test]
fn gcc_shapes_classify_and_run_relocated() {
    matrix("gcc");
}

#[test]
fn clang_shapes_classify_and_run_relocated() {
    matrix("clang");
}

/// C++ exceptions thrown through functions entered by their detours (the
/// unwinder sees the original return addresses: calls in detours are
/// emulated).
#[test]
fn exceptions_unwind_through_relocated_functions() {
    let dir = out_dir();
    for (compiler, opt) in [("g++", "-O2"), ("g++", "-O0"), ("clang++", "-O2")] {
        let out = dir.join(format!("cxx-{compiler}{opt}.so"));
        compile(compiler, &[opt], &["shapes_cxx.cc"], &out);
        let image = Image::parse(&std::fs::read(&out).unwrap()).unwrap();
        agree_with_objdump(&out, &image);
        let what = format!("{compiler} {opt}");
        assert!(image.find("cxx_catch").unwrap().is_relocatable(), "{what}");
        let a = Loaded::open(&copy_of(&out, "patched"), &image, "cxx_catch");
        let b = Loaded::open(&copy_of(&out, "reference"), &image, "cxx_catch");
        let patched = patch_all(&image, &a);
        assert!(
            patched.relocated >= 3,
            "{what}: {} relocated",
            patched.relocated
        );
        let (fa, fb) = (a.f2("cxx_catch"), b.f2("cxx_catch"));
        for x in A {
            for y in B {
                assert_eq!(fa(x, y), fb(x, y), "{what}: cxx_catch({x}, {y})");
            }
        }
        assert_eq!(patched.count("cxx_catch"), Some((A.len() * B.len()) as u64));
        // libstdc++ objects may not be unloadable: keep both copies and
        // the detours for the process's lifetime.
        patched.leak();
    }
}
