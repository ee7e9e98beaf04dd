//! Shared by the relocation tests: a stock library (no sites) built and
//! loaded, its functions analysed by `livetrace-reloc`, and detours built
//! for the relocatable ones in memory from the engine.

#![allow(dead_code)]

use std::path::PathBuf;

use livetrace_fixtures::stock::{self, Stock, HAND};
use livetrace_poke::relocation::{alloc_detour, write_detour, Relocation};
use livetrace_reloc::{Image, Prologue, Refusal};

/// Compiled stock functions per library.
pub const STOCK: usize = 64;

/// One function of the library, as the tests see it.
pub struct Func {
    pub name: String,
    pub entry: usize,
    /// Relocated: the engine's description; refused: why.
    pub verdict: Result<Relocation, Refusal>,
    /// Its counter index in the library (`lt_stock_count_<i>`).
    pub counter: usize,
    /// What the analysis said for a hand-written one.
    pub expect: Option<Option<&'static str>>,
    /// The prologue and the library's load bias, to build more detours.
    pub prologue: Option<(Prologue, u64)>,
}

/// A detour for `p` in fresh engine memory.
pub fn detour(p: &Prologue, bias: u64) -> Result<Relocation, Refusal> {
    let (lo, hi) = p.detour_window(bias).expect("a window");
    let addr = alloc_detour(
        lo as usize,
        hi as usize,
        p.site() as usize + bias as usize,
        p.detour_len(),
    )
    .unwrap();
    let det = p.relocate(bias, addr as u64)?;
    write_detour(addr, &det.bytes).unwrap();
    Ok(Relocation {
        site: det.site as usize,
        original: det.original.clone(),
        detour: addr,
    })
}

impl Func {
    /// Another detour for this (relocatable) function.
    pub fn fresh(&self) -> Relocation {
        let (p, bias) = self.prologue.as_ref().expect("relocatable");
        detour(p, *bias).unwrap()
    }
}

pub struct Lib {
    pub stock: Stock,
    /// An untouched copy, for reference results.
    pub twin: Stock,
    pub funcs: Vec<Func>,
}

pub fn dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("lt-reloc-{tag}-{}", std::process::id()))
}

/// Builds, loads and analyses a library of `STOCK` compiled functions
/// plus the hand-written ones; builds a detour for each relocatable one.
pub fn load(tag: &str) -> Lib {
    let n = STOCK + HAND.len();
    let d = dir(tag);
    let path = stock::build(&d, &format!("libstock_{tag}.so"), n);
    let twin_path = d.join(format!("libstock_{tag}_twin.so"));
    std::fs::copy(&path, &twin_path).unwrap();
    let lib = Stock::open(&path, n);
    let twin = Stock::open(&twin_path, n);
    let data = std::fs::read(&path).unwrap();
    let image = Image::parse(&data).unwrap();
    let mut names: Vec<(String, usize, Option<Option<&'static str>>)> =
        (0..STOCK).map(|i| (stock::name(i), i, None)).collect();
    for (j, &(name, expect, _)) in HAND.iter().enumerate() {
        names.push((name.to_string(), STOCK + j, Some(expect)));
    }
    let funcs = names
        .into_iter()
        .map(|(name, counter, expect)| {
            let entry = lib.sym(&name).unwrap();
            let cand = image
                .find(&name)
                .unwrap_or_else(|| panic!("{name} is a candidate"));
            let bias = entry as u64 - cand.addr;
            let verdict = cand.verdict.clone().and_then(|p| detour(&p, bias));
            let prologue = cand.verdict.clone().ok().map(|p| (p, bias));
            Func {
                name,
                entry,
                verdict,
                counter,
                expect,
                prologue,
            }
        })
        .collect();
    Lib {
        stock: lib,
        twin,
        funcs,
    }
}

/// The inputs every function is called with.
pub const INPUTS: [(i64, i64); 6] = [(0, 0), (5, 3), (1 << 40, 77), (-9, 1000), (7, -2), (3, 9)];

impl Lib {
    pub fn relocations(&self) -> Vec<Relocation> {
        self.funcs
            .iter()
            .filter_map(|f| f.verdict.as_ref().ok().cloned())
            .collect()
    }

    /// Calls `f` on every input and compares with the twin; `lt_hand_rep`
    /// reads nothing. Returns the number of calls.
    pub fn check(&self, f: &Func) -> Result<u64, String> {
        let mine = self.stock.func(&f.name);
        let twin = self.twin.func(&f.name);
        let mut calls = 0;
        for (a, b) in INPUTS {
            let (a, b) = if f.name == "lt_hand_rep" {
                (0, 0)
            } else {
                (a, b)
            };
            let (x, y) = (mine(a, b), twin(a, b));
            calls += 1;
            if x != y {
                return Err(format!("{}({a}, {b}) = {x}, expected {y}", f.name));
            }
        }
        Ok(calls)
    }
}
