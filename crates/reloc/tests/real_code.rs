//! Real libraries built with no flags (zlib and zstd from the sources that
//! ship in the crates.io packages `libz-sys` and `zstd-sys`): every function
//! that can be relocated is, in one loaded copy, and compression and
//! decompression give byte-identical results to an untouched copy, every
//! call counted by the detours. Skipped, saying so, when the sources are not
//! in cargo's registry (`/work/shared/realcode/build.sh` fetches them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::exec::{copy_of, patch_all, Loaded};
use livetrace_reloc::Image;

fn registry_src(prefix: &str, sub: &str) -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(home.join("registry/src"))
        .ok()?
        .flatten()
        .flat_map(|idx| {
            std::fs::read_dir(idx.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .map(|p| p.join(sub))
        .filter(|p| p.is_dir())
        .collect();
    found.sort();
    found.pop()
}

/// Builds a shared object at -O2 from `args`, flags and C or assembly
/// sources: each source compiled on its own, as many at once as there are
/// cores, then linked.
fn build(compiler: &str, out: &Path, args: &[String]) {
    let (sources, flags): (Vec<&String>, Vec<&String>) = args
        .iter()
        .partition(|a| a.ends_with(".c") || a.ends_with(".S"));
    let objs: Vec<PathBuf> = (0..sources.len())
        .map(|i| out.with_extension(format!("{i}.o")))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(src) = sources.get(i) else { break };
                let o = Command::new(compiler)
                    .args(["-O2", "-fPIC", "-c", "-o"])
                    .arg(&objs[i])
                    .args(&flags)
                    .arg(src)
                    .output()
                    .unwrap();
                assert!(
                    o.status.success(),
                    "{src}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            });
        }
    });
    let o = Command::new(compiler)
        .args(["-shared", "-o"])
        .arg(out)
        .args(&objs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for o in objs {
        let _ = std::fs::remove_file(o);
    }
}

fn out_dir() -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("reloc-real-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Inputs: text-like, random, repetitive, records.
fn inputs() -> Vec<Vec<u8>> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words = [
        "the ",
        "quick ",
        "relocated ",
        "prologue ",
        "jumps ",
        "over ",
        "lazy ",
        "sites\n",
    ];
    let text: Vec<u8> = (0..40_000)
        .flat_map(|_| words[(rand() % 8) as usize].bytes())
        .collect();
    let random: Vec<u8> = (0..100_000).map(|_| rand() as u8).collect();
    let repetitive: Vec<u8> = b"abcabcabd".iter().cycle().take(200_000).copied().collect();
    let records: Vec<u8> = (0..10_000u32)
        .flat_map(|i| [i.to_le_bytes(), (i * 7 % 13).to_le_bytes()].concat())
        .collect();
    vec![text, random, repetitive, records, Vec::new()]
}

type Compress2 = extern "C" fn(*mut u8, *mut u64, *const u8, u64, i32) -> i32;
type Uncompress = extern "C" fn(*mut u8, *mut u64, *const u8, u64) -> i32;
type Checksum = extern "C" fn(u64, *const u8, u32) -> u64;

fn sym<T: Copy>(lib: &Loaded, name: &str) -> T {
    let p = lib.sym(name).unwrap_or_else(|| panic!("{name}"));
    assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<usize>());
    // SAFETY: T is the C signature of `name` (a function pointer type).
    unsafe { std::mem::transmute_copy::<usize, T>(&p) }
}

/// One round of zlib work; returns everything it produced.
fn zlib_round(lib: &Loaded) -> Vec<u8> {
    let compress2: Compress2 = sym(lib, "compress2");
    let uncompress: Uncompress = sym(lib, "uncompress");
    let crc32: Checksum = sym(lib, "crc32");
    let adler32: Checksum = sym(lib, "adler32");
    let mut out = Vec::new();
    for input in inputs() {
        for level in [1, 6, 9] {
            let mut comp = vec![0u8; input.len() + input.len() / 100 + 64];
            let mut clen = comp.len() as u64;
            assert_eq!(
                compress2(
                    comp.as_mut_ptr(),
                    &mut clen,
                    input.as_ptr(),
                    input.len() as u64,
                    level
                ),
                0
            );
            comp.truncate(clen as usize);
            let mut back = vec![0u8; input.len() + 1];
            let mut blen = back.len() as u64;
            assert_eq!(
                uncompress(back.as_mut_ptr(), &mut blen, comp.as_ptr(), clen),
                0
            );
            assert_eq!(&back[..blen as usize], &input[..], "round trip");
            out.extend(&comp);
        }
        out.extend(crc32(0, input.as_ptr(), input.len() as u32).to_le_bytes());
        out.extend(adler32(1, input.as_ptr(), input.len() as u32).to_le_bytes());
    }
    out
}

type ZCompress = extern "C" fn(*mut u8, usize, *const u8, usize, i32) -> usize;
type ZDecompress = extern "C" fn(*mut u8, usize, *const u8, usize) -> usize;
type ZIsError = extern "C" fn(usize) -> u32;
type ZBound = extern "C" fn(usize) -> usize;

fn zstd_round(lib: &Loaded) -> Vec<u8> {
    let compress: ZCompress = sym(lib, "ZSTD_compress");
    let decompress: ZDecompress = sym(lib, "ZSTD_decompress");
    let is_error: ZIsError = sym(lib, "ZSTD_isError");
    let bound: ZBound = sym(lib, "ZSTD_compressBound");
    let mut out = Vec::new();
    for input in inputs() {
        for level in [-5, 3, 12] {
            let mut comp = vec![0u8; bound(input.len())];
            let n = compress(
                comp.as_mut_ptr(),
                comp.len(),
                input.as_ptr(),
                input.len(),
                level,
            );
            assert_eq!(is_error(n), 0);
            comp.truncate(n);
            let mut back = vec![0u8; input.len() + 1];
            let m = decompress(back.as_mut_ptr(), back.len(), comp.as_ptr(), comp.len());
            assert_eq!(is_error(m), 0);
            assert_eq!(&back[..m], &input[..], "round trip");
            out.extend(&comp);
        }
    }
    out
}

fn relocate_and_compare(
    so: &Path,
    anchor: &str,
    round: fn(&Loaded) -> Vec<u8>,
    counted: &[(&str, u64)],
) {
    let image = Image::parse(&std::fs::read(so).unwrap()).unwrap();
    let s = image.summary();
    eprintln!(
        "{}: {} functions, {} relocatable ({:.1}%), refusals {:?}",
        so.display(),
        s.functions,
        s.relocatable,
        s.patchable_pct(),
        s.reasons
    );
    assert!(s.patchable_pct() >= 90.0);
    let a = Loaded::open(&copy_of(so, "patched"), &image, anchor);
    let b = Loaded::open(&copy_of(so, "reference"), &image, anchor);
    let reference = round(&b);
    let patched = patch_all(&image, &a);
    assert_eq!(patched.relocated, s.relocatable);
    for i in 0..2 {
        assert!(
            round(&a) == reference,
            "{}: round {i} differs",
            so.display()
        );
    }
    for (name, n) in counted {
        assert_eq!(patched.count(name), Some(*n), "{name}");
    }
    // SAFETY: nothing of either copy is referenced any more; `a`'s
    // finalisers run through their detours, still mapped.
    unsafe {
        assert_eq!(libc::dlclose(a.handle), 0);
        assert_eq!(libc::dlclose(b.handle), 0);
    }
    drop(patched);
}

#[test]
fn zlib_relocated_compresses_identically() {
    let Some(src) = registry_src("libz-sys-", "src/zlib") else {
        eprintln!("SKIPPED: libz-sys sources not in cargo's registry");
        return;
    };
    let dir = out_dir();
    let mut args: Vec<String> = [
        "-DSTDC",
        "-D_LARGEFILE64_SOURCE",
        "-DHAVE_UNISTD_H",
        "-DHAVE_STDARG_H",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("-I{}", src.display()));
    for f in [
        "adler32", "compress", "crc32", "deflate", "gzclose", "gzlib", "gzread", "gzwrite",
        "infback", "inffast", "inflate", "inftrees", "trees", "uncompr", "zutil",
    ] {
        args.push(src.join(format!("{f}.c")).display().to_string());
    }
    for compiler in ["gcc", "clang"] {
        let so = dir.join(format!("libz-{compiler}.so"));
        build(compiler, &so, &args);
        // 5 inputs × 3 levels per round, two patched rounds.
        relocate_and_compare(
            &so,
            "compress2",
            zlib_round,
            &[("compress2", 30), ("uncompress", 30), ("crc32", 10)],
        );
    }
}

#[test]
fn zstd_relocated_compresses_identically() {
    let Some(src) = registry_src("zstd-sys-", "zstd/lib") else {
        eprintln!("SKIPPED: zstd-sys sources not in cargo's registry");
        return;
    };
    let dir = out_dir();
    let mut args = vec![
        format!("-I{}", src.display()),
        format!("-I{}/common", src.display()),
    ];
    for sub in ["common", "compress", "decompress"] {
        let mut files: Vec<_> = std::fs::read_dir(src.join(sub))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "c" || e == "S"))
            .collect();
        files.sort();
        args.extend(files.iter().map(|p| p.display().to_string()));
    }
    let so = dir.join("libzstd-gcc.so");
    build("gcc", &so, &args);
    relocate_and_compare(
        &so,
        "ZSTD_compress",
        zstd_round,
        &[("ZSTD_compress", 30), ("ZSTD_decompress", 30)],
    );
}
