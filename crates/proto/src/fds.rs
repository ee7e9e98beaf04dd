//! Frames that carry file descriptors (`SCM_RIGHTS`): how a traced process
//! hands its ring buffers' memory files to a consumer.
//!
//! The descriptors travel with the first byte of the frame. A reader that
//! reads those bytes with plain `read` (every frame reader in this crate but
//! [`read_frame_with_fds`]) makes the kernel close them, so descriptors
//! nobody asked for never leak into a process.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use crate::{FrameError, MAX_FRAME};

/// At most this many descriptors travel in one frame.
pub const MAX_FDS: usize = 4;

/// Room for `MAX_FDS` descriptors in a control message buffer, aligned.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

const _: () = assert!(std::mem::size_of::<libc::cmsghdr>() + MAX_FDS * 4 <= 64);

/// Writes one frame with `fds` attached (at most [`MAX_FDS`]).
pub fn write_frame_with_fds(
    stream: &UnixStream,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    if payload.len() > MAX_FRAME || fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame or descriptor count over the limit",
        ));
    }
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(payload);
    let mut cmsg = CmsgBuf([0; 64]);
    let mut sent = 0;
    while sent < buf.len() {
        let mut iov = libc::iovec {
            iov_base: buf[sent..].as_ptr() as *mut libc::c_void,
            iov_len: buf.len() - sent,
        };
        // SAFETY: msghdr is plain data; zero is a valid "nothing" for it.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if sent == 0 && !fds.is_empty() {
            let bytes = std::mem::size_of_val(fds);
            // SAFETY: CMSG_SPACE only computes a size.
            let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
            msg.msg_control = cmsg.0.as_mut_ptr().cast();
            msg.msg_controllen = space;
            // SAFETY: the control buffer holds `space` bytes (checked at
            // compile time for MAX_FDS), aligned for cmsghdr; CMSG_FIRSTHDR
            // and CMSG_DATA point inside it.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(bytes as u32) as usize;
                let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                for (i, fd) in fds.iter().enumerate() {
                    data.add(i).write_unaligned(fd.as_raw_fd());
                }
            }
        }
        // SAFETY: `msg` points at live buffers for the call's duration.
        let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
    }
    Ok(())
}

/// Reads one frame's payload and the descriptors that came with it
/// (received close-on-exec). Refuses a length over `max` as
/// [`crate::read_frame`] does.
pub fn read_frame_with_fds(
    stream: &UnixStream,
    max: usize,
) -> Result<(Vec<u8>, Vec<OwnedFd>), FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    let mut fds = Vec::new();
    while got < 4 {
        let mut cmsg = CmsgBuf([0; 64]);
        let mut iov = libc::iovec {
            iov_base: len[got..].as_mut_ptr().cast(),
            iov_len: 4 - got,
        };
        // SAFETY: plain data, zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = cmsg.0.len();
        // SAFETY: `msg` points at live buffers for the call's duration.
        let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(FrameError::Io(e));
        }
        // Take ownership of whatever descriptors arrived, even on a short
        // or failed read, so none leaks.
        // SAFETY: the kernel filled `msg`'s control buffer; the CMSG
        // macros walk it within `msg_controllen`.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                    let header = libc::CMSG_LEN(0) as usize;
                    let count = ((*c).cmsg_len as usize).saturating_sub(header) / 4;
                    for i in 0..count {
                        fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if n == 0 {
            return Err(if got == 0 {
                FrameError::Closed
            } else {
                FrameError::Truncated
            });
        }
        got += n as usize;
    }
    let n = u32::from_le_bytes(len) as u64;
    if n > max as u64 {
        return Err(FrameError::TooLarge(n));
    }
    let mut payload = Vec::new();
    let mut s = stream;
    match (&mut s).take(n).read_to_end(&mut payload) {
        Ok(_) if payload.len() as u64 == n => Ok((payload, fds)),
        Ok(_) => Err(FrameError::Truncated),
        Err(e) => Err(FrameError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn descriptors_travel_with_their_frame() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        write_frame_with_fds(&a, b"hello", &[f.as_fd(), f.as_fd()]).unwrap();
        crate::write_frame(&mut &a, b"plain").unwrap();
        let (p, fds) = read_frame_with_fds(&b, MAX_FRAME).unwrap();
        assert_eq!((p.as_slice(), fds.len()), (&b"hello"[..], 2));
        let (p, fds) = read_frame_with_fds(&b, MAX_FRAME).unwrap();
        assert_eq!((p.as_slice(), fds.len()), (&b"plain"[..], 0));
        // Descriptors a plain reader meets are closed by the kernel, not
        // leaked: the frame still reads.
        write_frame_with_fds(&a, b"again", &[f.as_fd()]).unwrap();
        assert_eq!(crate::read_frame(&mut &b, MAX_FRAME).unwrap(), b"again");
        drop(a);
        assert!(matches!(
            read_frame_with_fds(&b, MAX_FRAME),
            Err(FrameError::Closed)
        ));
    }
}
