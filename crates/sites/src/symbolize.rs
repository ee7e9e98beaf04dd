//! Naming arbitrary code addresses (callers, return addresses) by the
//! function symbol containing them, in any loaded object.
//!
//! The record table names only traceable functions; a tracer also needs to
//! name where they were called from. A [`Symbolizer`] takes the objects the
//! table knows, and reads each one's symbol table the first time an address
//! inside it is asked about (`.symtab`, else `.dynsym`, as the scan does).

use std::sync::OnceLock;

use crate::elf::{self, ElfInfo};
use crate::Table;

/// A function symbol, at its run-time address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// Demangled name.
    pub name: String,
    /// Run-time address of its first byte.
    pub addr: usize,
    /// Size in bytes (0 when the symbol table does not say).
    pub size: usize,
}

struct Obj {
    base: usize,
    path: Option<String>,
    ranges: Vec<(usize, usize)>,
    elf: OnceLock<ElfInfo>,
}

/// Names addresses inside the objects a [`Table`] knows.
pub struct Symbolizer {
    objs: Vec<Obj>,
}

impl Symbolizer {
    /// A symbolizer over `table`'s objects as they are now.
    pub fn new(table: &Table) -> Symbolizer {
        let objs = table
            .objects()
            .iter()
            .map(|o| Obj {
                base: o.base(),
                path: o.path().map(str::to_owned),
                ranges: o.exec_ranges().to_vec(),
                elf: OnceLock::new(),
            })
            .collect();
        Symbolizer { objs }
    }

    /// The function symbol containing `addr`, if any object has one.
    pub fn lookup(&self, addr: usize) -> Option<Symbol> {
        let o = self
            .objs
            .iter()
            .find(|o| o.ranges.iter().any(|&(s, e)| (s..e).contains(&addr)))?;
        let info = o.elf.get_or_init(|| {
            let Some(path) = o.path.as_deref() else {
                return ElfInfo::default();
            };
            elf::Mmap::open(path)
                .ok()
                .and_then(|m| elf::parse(m.bytes()).ok())
                .unwrap_or_default()
        });
        let s = info.containing((addr as u64).wrapping_sub(o.base as u64))?;
        Some(Symbol {
            name: crate::demangle(&s.name).unwrap_or_else(|| s.name.clone()),
            addr: o.base.wrapping_add(s.addr as usize),
            size: s.size as usize,
        })
    }
}
