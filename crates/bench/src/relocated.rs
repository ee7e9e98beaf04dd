//! `relocated`: how many functions of stock objects (built with no
//! patchable-entry flag) can be given a site by prologue relocation
//! (`livetrace-reloc`), and why the others cannot.
//!
//! Per object: `RESULT bench=relocated object=NAME ... patchable_pct=P`,
//! where P is relocatable functions over functions (candidates minus
//! ifunc resolvers, PLT stubs and cold parts), then one `RESULT
//! ... refusal=KIND count=N` line per refusal kind, most frequent first,
//! with an example of each on stderr. Every relocatable function's detour
//! is also built, at an address in its window, as a check.

use std::path::PathBuf;
use std::time::Instant;

use livetrace_reloc::{Image, Refusal};

use crate::stats::median;

/// The system's libc and the no-site builds of the real-code drivers
/// (`/work/shared/realcode/build.sh /tmp/rc zstd zlib` makes them).
const DEFAULT_OBJECTS: &[&str] = &[
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/tmp/rc/plain/zstd_driver",
    "/tmp/rc/plain/zlib_driver",
];

#[derive(clap::Args)]
pub struct Args {
    /// ELF objects to analyse (default: the system's libc and the no-site
    /// real-code drivers).
    #[arg(long = "object")]
    objects: Vec<PathBuf>,
    /// Refusal kinds to print per object.
    #[arg(long, default_value_t = 12)]
    top: usize,
    /// Analyses per object, for the median time.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

pub fn run(a: Args) {
    let objects: Vec<PathBuf> = if a.objects.is_empty() {
        DEFAULT_OBJECTS.iter().map(PathBuf::from).collect()
    } else {
        a.objects
    };
    for path in objects {
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("relocated: skipping {}: {e}", path.display());
                continue;
            }
        };
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut times = Vec::new();
        let mut image = None;
        for _ in 0..a.rounds.max(1) {
            let t = Instant::now();
            match Image::parse(&data) {
                Ok(i) => image = Some(i),
                Err(e) => {
                    eprintln!("relocated: {}: {e}", path.display());
                    break;
                }
            }
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let Some(image) = image else { continue };
        let s = image.summary();

        // Build every detour, in the middle of its window (bias 0).
        let mut built = 0usize;
        let mut detour_bytes = 0usize;
        let mut region_bytes = 0usize;
        let mut after_endbr = 0usize;
        for c in image.candidates() {
            let Ok(p) = &c.verdict else { continue };
            let (lo, hi) = p.detour_window(0).expect("window");
            if let Ok(d) = p.relocate(0, lo / 2 + hi / 2) {
                built += 1;
                detour_bytes += d.bytes.len();
                region_bytes += p.len();
                after_endbr += p.after_endbr() as usize;
            }
        }
        assert_eq!(
            built, s.relocatable,
            "{name}: every relocatable prologue builds a detour"
        );
        let n = built.max(1) as f64;
        println!(
            "RESULT bench=relocated object={name} candidates={} excluded={} functions={} relocatable={} \
             patchable_pct={:.2} refused={} after_endbr={after_endbr} region_bytes_avg={:.2} \
             detour_bytes_avg={:.2} analyze_ms={:.2}",
            s.candidates,
            s.excluded,
            s.functions,
            s.relocatable,
            s.patchable_pct(),
            s.functions - s.relocatable,
            region_bytes as f64 / n,
            detour_bytes as f64 / n,
            median(&mut times),
        );
        for (kind, count) in s.reasons.iter().take(a.top) {
            let example = image
                .candidates()
                .iter()
                .find(|c| c.verdict.as_ref().err().map(Refusal::kind) == Some(kind));
            let excluded = example.is_some_and(|c| !c.is_function());
            println!(
                "RESULT bench=relocated object={name} refusal={kind} count={count} excluded={}",
                excluded as u8
            );
            if let Some(c) = example {
                eprintln!(
                    "  {name}: {count} × {kind}, e.g. {} ({:#x}): {}",
                    c.name(),
                    c.addr,
                    c.verdict.as_ref().unwrap_err()
                );
            }
        }
    }
}
