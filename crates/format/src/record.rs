//! The record: 32 bytes, the same in the tracers' ring buffers and in files.

/// One trace event: a timestamp in clock ticks and three words. The
/// tracers write `a` = function, `b` = caller or depth, `c` = [`Kind`]
/// code; the ring buffers carry any words. 32 bytes, so two share a cache
/// line, and the file's records are these bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Record {
    /// Timestamp in clock ticks (see [`crate::ClockCal`]).
    pub ts: u64,
    /// The function's address (tracer-defined in general).
    pub a: u64,
    /// The caller's return address or the depth (tracer-defined in general).
    pub b: u64,
    /// The [`Kind`] code (tracer-defined in general).
    pub c: u64,
}

const _: () = assert!(std::mem::size_of::<Record>() == 32);
const _: () = assert!(std::mem::align_of::<Record>() == 8);

/// What a tracer's record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Function tracer: `a` was called, `b` is the caller's return address.
    Call,
    /// Graph tracer: `a` was entered at depth `b`.
    Entry,
    /// Graph tracer: `a` returned, from depth `b`.
    Exit,
    /// Graph tracer: `a` was called too deep to follow (not recorded
    /// further; `b` is 0).
    Overflow,
    /// A code this version does not know.
    Other(u64),
}

impl Kind {
    /// Its code in `Record::c`.
    pub const fn code(self) -> u64 {
        match self {
            Kind::Call => 1,
            Kind::Entry => 2,
            Kind::Exit => 3,
            Kind::Overflow => 4,
            Kind::Other(c) => c,
        }
    }

    /// The kind with code `c`.
    pub const fn from_code(c: u64) -> Kind {
        match c {
            1 => Kind::Call,
            2 => Kind::Entry,
            3 => Kind::Exit,
            4 => Kind::Overflow,
            c => Kind::Other(c),
        }
    }
}

impl Record {
    /// What the record says, for the tracers' records.
    pub fn kind(&self) -> Kind {
        Kind::from_code(self.c)
    }

    /// The records' bytes, as stored in files.
    pub fn as_bytes(records: &[Record]) -> &[u8] {
        // SAFETY: Record is repr(C), four u64s with no padding; any
        // initialised Record slice is that many initialised bytes.
        unsafe {
            std::slice::from_raw_parts(
                records.as_ptr().cast::<u8>(),
                std::mem::size_of_val(records),
            )
        }
    }

    /// The records' bytes, writable (to read records into).
    pub fn as_bytes_mut(records: &mut [Record]) -> &mut [u8] {
        // SAFETY: as in `as_bytes`; moreover every bit pattern is a valid
        // Record, so any bytes written through this slice leave valid ones.
        unsafe {
            std::slice::from_raw_parts_mut(
                records.as_mut_ptr().cast::<u8>(),
                std::mem::size_of_val(records),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in [
            Kind::Call,
            Kind::Entry,
            Kind::Exit,
            Kind::Overflow,
            Kind::Other(77),
        ] {
            assert_eq!(Kind::from_code(k.code()), k);
        }
    }

    #[test]
    fn bytes_are_the_fields_in_order() {
        let r = [Record {
            ts: 1,
            a: 2,
            b: 3,
            c: 4,
        }];
        let b = Record::as_bytes(&r);
        assert_eq!(b.len(), 32);
        assert_eq!(&b[0..8], &1u64.to_le_bytes());
        assert_eq!(&b[24..32], &4u64.to_le_bytes());
    }
}
