//! The object's allocated sections by address: where the analysis reads
//! code and data, and whether an address is executable.

pub(super) struct Section<'a> {
    pub(super) name: String,
    pub(super) addr: u64,
    pub(super) data: &'a [u8],
    pub(super) exec: bool,
}

pub(super) struct Sections<'a> {
    pub(super) list: Vec<Section<'a>>,
}

impl<'a> Sections<'a> {
    pub(super) fn containing(&self, addr: u64) -> Option<&Section<'a>> {
        self.list
            .iter()
            .find(|s| addr >= s.addr && addr - s.addr < s.data.len() as u64)
    }

    pub(super) fn is_exec(&self, addr: u64) -> bool {
        self.containing(addr).is_some_and(|s| s.exec)
    }

    /// The bytes from `addr` to the end of its section.
    pub(super) fn from(&self, addr: u64) -> Option<&'a [u8]> {
        self.containing(addr)
            .map(|s| &s.data[(addr - s.addr) as usize..])
    }

    pub(super) fn read<const N: usize>(&self, addr: u64) -> Option<[u8; N]> {
        self.from(addr)?.get(..N)?.try_into().ok()
    }
}
