//! Who is at the other end of a connection.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// The peer's credentials, as the kernel recorded them at `connect`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer {
    pub uid: u32,
}

pub(crate) fn peer(stream: &UnixStream) -> io::Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` is the size
    // of `cred`, as SO_PEERCRED requires.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Peer { uid: cred.uid })
}

/// The process's own user, or root, may connect.
pub(crate) fn allowed(p: Peer) -> bool {
    // SAFETY: geteuid and getuid have no preconditions.
    let (euid, uid) = unsafe { (libc::geteuid(), libc::getuid()) };
    p.uid == 0 || p.uid == euid || p.uid == uid
}
