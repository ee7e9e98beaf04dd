//! The fork rule, which needs a real `fork`.

use super::*;

#[test]
fn a_fork_child_never_writes_into_its_parents_buffers() {
    let rings = Rings::new(Config {
        records_per_thread: 64,
        ..Config::default()
    });
    assert!(rings.write(Record::default()));
    // SAFETY: the child only writes records (atomics, no lock; an alarm
    // ends it if it blocks) and calls _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: alarm and _exit are async-signal-safe.
        unsafe { libc::alarm(5) };
        let written = (0..10).any(|_| {
            rings.write(Record {
                ts: 9,
                a: 9,
                b: 9,
                c: 9,
            })
        });
        // SAFETY: as above.
        unsafe { libc::_exit(i32::from(written)) };
    }
    assert!(pid > 0, "fork failed");
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child blocked or wrote (status {status:#x})"
    );
    // The parent's buffer holds its own record only, and its count of
    // records without a buffer is the parent's alone.
    let snap = rings.snapshot();
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].records, vec![Record::default()]);
    assert_eq!(rings.unattributed_lost(), 0);
    assert!(rings.write(Record::default()));
}
