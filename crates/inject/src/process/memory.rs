//! The process's memory through `/proc/PID/mem`: reads and writes (of
//! read-only mappings too), strings, and the objects mapped now.

use super::*;

impl Process {
    /// Reads `buf.len()` bytes at `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
        let mut done = 0;
        while done < buf.len() {
            match self.mem.read_at(&mut buf[done..], addr + done as u64) {
                Ok(0) => {
                    return Err(Error::Memory {
                        addr: addr + done as u64,
                        source: io::Error::from(io::ErrorKind::UnexpectedEof),
                    })
                }
                Ok(n) => done += n,
                Err(e) => {
                    return Err(Error::Memory {
                        addr: addr + done as u64,
                        source: e,
                    })
                }
            }
        }
        Ok(())
    }

    /// Reads a little-endian u64 at `addr`.
    pub fn read_u64(&self, addr: u64) -> Result<u64, Error> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes `bytes` at `addr` (any mapping, read-only ones included).
    pub fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), Error> {
        let mut done = 0;
        while done < bytes.len() {
            match self.mem.write_at(&bytes[done..], addr + done as u64) {
                Ok(0) => {
                    return Err(Error::Memory {
                        addr: addr + done as u64,
                        source: io::Error::from(io::ErrorKind::WriteZero),
                    })
                }
                Ok(n) => done += n,
                Err(e) => {
                    return Err(Error::Memory {
                        addr: addr + done as u64,
                        source: e,
                    })
                }
            }
        }
        Ok(())
    }

    /// Reads a NUL-terminated string at `addr` (at most `max` bytes).
    pub fn read_cstr(&self, addr: u64, max: usize) -> Result<String, Error> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 256];
        while out.len() < max {
            // A chunk may cross into an unmapped page: shrink to the page.
            let at = addr + out.len() as u64;
            let room = (4096 - (at & 4095)) as usize;
            let n = chunk.len().min(room);
            self.read(at, &mut chunk[..n])?;
            if let Some(z) = chunk[..n].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..z]);
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            out.extend_from_slice(&chunk[..n]);
        }
        out.truncate(max);
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// The object mapped from `path` (as the process names it) now, if
    /// any.
    pub fn module(&self, path: &str) -> Result<Option<Module>, Error> {
        let maps = procfs::maps(self.pid).map_err(Error::Io)?;
        Ok(elf::modules(self.pid, &maps, &self.target.root)
            .into_iter()
            .find(|m| m.path == path || m.path.strip_suffix(" (deleted)") == Some(path)))
    }
}
