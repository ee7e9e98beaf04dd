//! What is mapped where, from `/proc/self/maps`: the crate's one parser of
//! it.
//!
//! The batch reads the map once per `apply()` for two reasons: a site must be
//! validated without faulting (an unmapped or non-executable address is a
//! clear error, not a SIGSEGV), and the exact protection of every page it
//! makes writable must be restored afterwards. The world's stack scans
//! read it for the readable regions, and [`crate::near`] for the holes
//! between mappings.

use std::io::Read;

/// One mapping: `[start, end)` with its protection bits (`PROT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Region {
    pub start: usize,
    pub end: usize,
    pub prot: i32,
    /// `MAP_SHARED`: a write would reach the file (or the other mappers).
    pub shared: bool,
    /// The heap (`[heap]`, grows up into the space above it) or the main
    /// thread's stack (`[stack]`, grows down into the space below it).
    pub grows: bool,
}

/// The process's mappings, sorted by address.
pub(crate) struct Maps {
    regions: Vec<Region>,
}

impl Maps {
    pub fn read() -> std::io::Result<Maps> {
        let mut text = String::with_capacity(16 * 1024);
        std::fs::File::open("/proc/self/maps")?.read_to_string(&mut text)?;
        Ok(Maps::parse(&text))
    }

    pub fn parse(text: &str) -> Maps {
        let mut regions = Vec::new();
        for line in text.lines() {
            let mut fields = line.split_ascii_whitespace();
            let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Some((a, b)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            else {
                continue;
            };
            let p = perms.as_bytes();
            let mut prot = 0;
            if p.first() == Some(&b'r') {
                prot |= libc::PROT_READ;
            }
            if p.get(1) == Some(&b'w') {
                prot |= libc::PROT_WRITE;
            }
            if p.get(2) == Some(&b'x') {
                prot |= libc::PROT_EXEC;
            }
            let shared = p.get(3) == Some(&b's');
            // Offset, device and inode, then the name (if any).
            let name = fields.nth(3).unwrap_or("");
            let grows = name == "[heap]" || name.starts_with("[stack");
            regions.push(Region {
                start,
                end,
                prot,
                shared,
                grows,
            });
        }
        regions.sort_by_key(|r| r.start);
        Maps { regions }
    }

    /// Every mapping, sorted by start address.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The region containing `addr`.
    pub fn find(&self, addr: usize) -> Option<&Region> {
        let i = self.regions.partition_point(|r| r.end <= addr);
        self.regions.get(i).filter(|r| r.start <= addr)
    }

    /// Whether `[addr, addr+len)` is entirely mapped readable.
    pub fn is_readable(&self, addr: usize, len: usize) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        let mut at = addr;
        while at < end {
            match self.find(at) {
                Some(r) if r.prot & libc::PROT_READ != 0 => at = r.end,
                _ => return false,
            }
        }
        true
    }

    /// Whether any byte of `[addr, addr+len)` is in a shared mapping.
    pub fn is_shared(&self, addr: usize, len: usize) -> bool {
        let mut at = addr;
        while at < addr.saturating_add(len) {
            match self.find(at) {
                Some(r) => {
                    if r.shared {
                        return true;
                    }
                    at = r.end;
                }
                None => return false,
            }
        }
        false
    }

    /// Whether `[addr, addr+len)` is entirely mapped readable and executable,
    /// possibly across adjacent regions.
    pub fn is_text(&self, addr: usize, len: usize) -> bool {
        self.text_range(addr, len).is_some()
    }

    /// The whole run of adjacent readable, executable regions containing
    /// `[addr, addr+len)`, if the range lies entirely in one.
    pub fn text_range(&self, addr: usize, len: usize) -> Option<std::ops::Range<usize>> {
        let want = libc::PROT_READ | libc::PROT_EXEC;
        let end = addr.checked_add(len)?;
        let mut i = self.regions.partition_point(|r| r.end <= addr);
        let first = self
            .regions
            .get(i)
            .filter(|r| r.start <= addr && r.prot & want == want)?;
        let (start, mut upto) = (first.start, first.end);
        while let Some(r) = self.regions.get(i + 1) {
            if r.start != upto || r.prot & want != want {
                break;
            }
            upto = r.end;
            i += 1;
        }
        (end <= upto).then_some(start..upto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 08:01 123 /bin/x
55d0c0a02000-55d0c0a05000 r-xp 00002000 08:01 123 /bin/x
55d0c0a05000-55d0c0a06000 rwxp 00005000 08:01 123 /bin/x
55d0c0a06000-55d0c0a07000 r-xs 00000000 08:01 124 /tmp/shared
55d0c1a00000-55d0c1a21000 rw-p 00000000 00:00 0                          [heap]
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";

    #[test]
    fn parses_and_finds() {
        let m = Maps::parse(SAMPLE);
        assert_eq!(m.regions.len(), 6);
        let grows: Vec<usize> = m
            .regions()
            .iter()
            .filter(|r| r.grows)
            .map(|r| r.start)
            .collect();
        assert_eq!(grows, [0x55d0c1a00000, 0x7ffd00000000]);
        assert!(m.is_shared(0x55d0c0a06010, 5));
        assert!(!m.is_shared(0x55d0c0a02abc, 5));
        let r = m.find(0x55d0c0a02abc).unwrap();
        assert_eq!(r.prot, libc::PROT_READ | libc::PROT_EXEC);
        assert!(m.find(0x55d0c0a07000).is_none());
        assert!(m.find(0).is_none());
    }

    #[test]
    fn text_spans_adjacent_executable_regions() {
        let m = Maps::parse(SAMPLE);
        assert!(m.is_text(0x55d0c0a04ffe, 5)); // r-x then rwx
        assert!(!m.is_text(0x55d0c0a01ffe, 5)); // r-- then r-x
        assert!(!m.is_text(0x55d0c0a06ffe, 5)); // runs off the end
        assert!(!m.is_text(0x7ffd00000000, 5)); // not executable
        assert!(!m.is_text(usize::MAX - 2, 5));
    }

    #[test]
    fn reads_own_maps() {
        let m = Maps::read().unwrap();
        let f = reads_own_maps as *const () as usize;
        assert!(m.is_text(f, 5));
    }
}
