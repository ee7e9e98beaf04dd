//! liblivetrace.so loaded late, with `dlopen`, into a running
//! multithreaded program (no injector): its thread-local block must be in
//! static TLS, its constructor must stay inert, it starts and tears down
//! through its attach entry points, and `dlclose` must unmap it although
//! program threads recorded events (registering thread-local destructors)
//! and outlive it.

mod common;

use std::process::Command;

use common::{lib, scratch};

#[test]
fn library_asks_for_static_tls() {
    use object::read::elf::{Dyn, FileHeader, ProgramHeader};
    let data = std::fs::read(lib()).unwrap();
    let hdr = object::elf::FileHeader64::<object::Endianness>::parse(&*data).unwrap();
    let e = hdr.endian().unwrap();
    let flags = hdr
        .program_headers(e, &*data)
        .unwrap()
        .iter()
        .find_map(|p| p.dynamic(e, &*data).ok().flatten())
        .expect("a dynamic section")
        .iter()
        .find(|d| d.d_tag(e) == u64::from(object::elf::DT_FLAGS))
        .map_or(0, |d| d.d_val(e));
    assert!(
        flags & u64::from(object::elf::DF_STATIC_TLS) != 0,
        "DT_FLAGS {flags:#x} lacks STATIC_TLS: a late dlopen would give it dynamic TLS"
    );
    // glibc keeps ~1.5 KiB of static TLS for every library loaded late,
    // together; livetrace must leave room for others.
    let tls = hdr
        .program_headers(e, &*data)
        .unwrap()
        .iter()
        .find(|p| p.p_type(e) == object::elf::PT_TLS)
        .map_or(0, |p| p.p_memsz(e));
    eprintln!("liblivetrace.so's TLS block: {tls} bytes");
    assert!(
        tls <= 1024,
        "liblivetrace.so's TLS block is {tls} bytes: too large to be loaded late into a \
         program started without GLIBC_TUNABLES=glibc.rtld.optional_static_tls"
    );
}

#[test]
fn loaded_late_started_traced_torn_down_unloaded() {
    let dir = scratch("late");
    let exe = dir.join("late");
    let out = Command::new("gcc")
        .args(["-O2", "-pthread", "-fpatchable-function-entry=5", "-o"])
        .arg(&exe)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/c/late.c"))
        .arg("-ldl")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sockets = dir.join("sockets");
    std::fs::create_dir_all(&sockets).unwrap();
    let mut cmd = Command::new(&exe);
    cmd.arg(lib())
        .env("LIVETRACE_SOCKET_DIR", &sockets)
        .env_remove("LD_PRELOAD");
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |k: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {k} in:\n{stdout}"))
            .to_string()
    };
    assert_eq!(
        field("state_after_dlopen"),
        "0",
        "the constructor started it"
    );
    assert!(field("serving").ends_with(".sock"), "{stdout}");
    assert!(field("events").parse::<u64>().unwrap() > 0, "{stdout}");
    assert!(field("mapped_before_dlclose").parse::<u32>().unwrap() > 0);
    assert_eq!(
        field("mapped_after_dlclose"),
        "0",
        "dlclose left it mapped (pinned by thread-local destructors?)"
    );
    assert_eq!(field("threads_exited"), "1");
}
