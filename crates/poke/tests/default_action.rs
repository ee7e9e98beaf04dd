//! A breakpoint that is not ours, in a program with no SIGTRAP handler of its
//! own, still gets the default action: the process dies of SIGTRAP, exactly
//! as without livetrace. Run in a child process.

use std::os::unix::process::ExitStatusExt;

use livetrace_fixtures as fx;
use livetrace_poke::{Batch, Insn};

const CHILD: &str = "LIVETRACE_POKE_DEFAULT_ACTION_CHILD";

#[test]
fn foreign_breakpoint_without_handler_is_fatal() {
    if std::env::var_os(CHILD).is_some() {
        // The child: install the engine's handler with a real batch, then
        // hit a breakpoint of our own.
        let mut batch = Batch::new();
        batch
            .queue(fx::site(7), Insn::Nop, Insn::Call(fx::counter_a()))
            .unwrap();
        batch.apply().unwrap();
        // SAFETY: deliberately raises SIGTRAP; the process is expected to die.
        unsafe { std::arch::asm!("int3") };
        std::process::exit(0);
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "foreign_breakpoint_without_handler_is_fatal",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGTRAP),
        "child should die of SIGTRAP: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
