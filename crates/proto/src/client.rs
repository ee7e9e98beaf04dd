//! A blocking client: connect, say hello, then one call at a time.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{
    decode_response, encode, socket_path, write_frame, DecodeError, ErrorCode, FrameError, Request,
    Response, MAX_FRAME, PROTOCOL_VERSION,
};

/// How long a client waits for one reply before giving up on the server.
/// Generous: a live patch waits for every thread to leave the old code.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call failed.
#[derive(Debug)]
pub enum ClientError {
    /// No socket for this process: it does not run livetrace's server (or
    /// runs it as another user, whose sockets live elsewhere).
    NoServer(PathBuf),
    /// The socket exists but connecting failed.
    Connect(PathBuf, io::Error),
    /// The connection failed mid-call.
    Frame(FrameError),
    /// The server's reply could not be decoded.
    Decode(DecodeError),
    /// The server answered with an error.
    Server {
        /// Why.
        code: ErrorCode,
        /// What it said.
        message: String,
    },
    /// A reply that does not answer the request.
    Unexpected(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::NoServer(p) => write!(
                f,
                "no livetrace socket at {} (is the process running with livetrace's server: \
                 LIVETRACE=1 or livetrace_server::serve()?)",
                p.display()
            ),
            ClientError::Connect(p, e) => write!(f, "cannot connect to {}: {e}", p.display()),
            ClientError::Frame(e) => write!(f, "connection to the process failed: {e}"),
            ClientError::Decode(e) => write!(f, "{e}"),
            ClientError::Server { code, message } => write!(f, "{message} ({code:?})"),
            ClientError::Unexpected(s) => write!(f, "unexpected reply: {s}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect(_, e) => Some(e),
            ClientError::Frame(e) => Some(e),
            ClientError::Decode(e) => Some(e),
            _ => None,
        }
    }
}

/// The process at the other end, from its hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    /// Its pid.
    pub pid: u32,
    /// Its executable.
    pub program: String,
    /// Its command line.
    pub cmdline: Vec<String>,
    /// The connection's lease: send something at least this often.
    pub lease: Duration,
}

/// A connection that has said hello.
pub struct Client {
    stream: UnixStream,
    server: ServerInfo,
}

impl Client {
    /// Connects to process `pid`'s socket in [`crate::socket_dir`].
    pub fn connect(pid: u32) -> Result<Client, ClientError> {
        Client::connect_path(&socket_path(pid))
    }

    /// Connects to the socket at `path` and exchanges hellos.
    pub fn connect_path(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused if !path.exists() => {
                ClientError::NoServer(path.to_path_buf())
            }
            _ => ClientError::Connect(path.to_path_buf(), e),
        })?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| ClientError::Connect(path.to_path_buf(), e))?;
        let mut c = Client {
            stream,
            server: ServerInfo {
                pid: 0,
                program: String::new(),
                cmdline: Vec::new(),
                lease: Duration::ZERO,
            },
        };
        c.hello()?;
        Ok(c)
    }

    /// The process at the other end.
    pub fn server(&self) -> &ServerInfo {
        &self.server
    }

    /// The socket, e.g. to shut it down.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends `req` and waits for its reply, with the descriptors the reply
    /// carries (`SCM_RIGHTS`: [`Request::MapBuffers`], `Snapshot`).
    pub fn call_with_fds(
        &mut self,
        req: &Request,
    ) -> Result<(Response, Vec<std::os::fd::OwnedFd>), ClientError> {
        write_frame(&mut self.stream, &encode(req))
            .map_err(|e| ClientError::Frame(FrameError::Io(e)))?;
        let (payload, fds) =
            crate::read_frame_with_fds(&self.stream, MAX_FRAME).map_err(ClientError::Frame)?;
        match decode_response(&payload).map_err(ClientError::Decode)? {
            Response::Error { code, message } => Err(ClientError::Server { code, message }),
            r => Ok((r, fds)),
        }
    }

    /// A client on an already connected stream (`livetrace record`'s end of
    /// the socket pair it gives the program), after exchanging hellos,
    /// waiting at most `hello_timeout` for the other side's.
    pub fn from_stream(stream: UnixStream, hello_timeout: Duration) -> Result<Client, ClientError> {
        let timeout = |s: &UnixStream, t| {
            s.set_read_timeout(Some(t))
                .map_err(|e| ClientError::Connect(PathBuf::from("(socket pair)"), e))
        };
        timeout(&stream, hello_timeout)?;
        let mut c = Client {
            stream,
            server: ServerInfo {
                pid: 0,
                program: String::new(),
                cmdline: Vec::new(),
                lease: Duration::ZERO,
            },
        };
        c.hello()?;
        timeout(&c.stream, REPLY_TIMEOUT)?;
        Ok(c)
    }

    fn hello(&mut self) -> Result<(), ClientError> {
        match self.call(&Request::Hello {
            version: PROTOCOL_VERSION,
            client: format!("livetrace-proto {}", env!("CARGO_PKG_VERSION")),
        })? {
            Response::Hello {
                version,
                pid,
                program,
                cmdline,
                lease_ms,
            } if version == PROTOCOL_VERSION => {
                self.server = ServerInfo {
                    pid,
                    program,
                    cmdline,
                    lease: Duration::from_millis(lease_ms),
                };
                Ok(())
            }
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sends `req` and waits for its reply; an error reply is an `Err`.
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.call_with_progress(req, &mut |_, _| {})
    }

    /// As [`Client::call`], reporting `(bytes received, bytes expected)` as
    /// a large reply arrives.
    pub fn call_with_progress(
        &mut self,
        req: &Request,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Response, ClientError> {
        if let Err(e) = write_frame(&mut self.stream, &encode(req)) {
            // A server that refuses a connection (wrong user, too many
            // clients) sends its error and closes at once, so writing can
            // fail; the error it sent is still queued here, and says why.
            return match read_frame_progress(&mut self.stream, progress)
                .ok()
                .and_then(|p| decode_response(&p).ok())
            {
                Some(Response::Error { code, message }) => {
                    Err(ClientError::Server { code, message })
                }
                _ => Err(ClientError::Frame(FrameError::Io(e))),
            };
        }
        let payload =
            read_frame_progress(&mut self.stream, progress).map_err(ClientError::Frame)?;
        match decode_response(&payload).map_err(ClientError::Decode)? {
            Response::Error { code, message } => Err(ClientError::Server { code, message }),
            r => Ok(r),
        }
    }
}

fn read_frame_progress<R: Read>(
    r: &mut R,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Closed,
        _ => FrameError::Io(e),
    })?;
    let n = u32::from_le_bytes(len) as u64;
    if n > MAX_FRAME as u64 {
        return Err(FrameError::TooLarge(n));
    }
    let mut payload = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    while (payload.len() as u64) < n {
        let want = chunk.len().min((n - payload.len() as u64) as usize);
        match r.read(&mut chunk[..want]) {
            Ok(0) => return Err(FrameError::Truncated),
            Ok(k) => {
                payload.extend_from_slice(&chunk[..k]);
                progress(payload.len() as u64, n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(payload)
}
