//! Lists an ELF object's candidate functions with their verdicts, the way
//! `livetrace ls --why-not` will:
//!
//! ```text
//! cargo run -p livetrace-reloc --example why_not -- /lib/x86_64-linux-gnu/libc.so.6 [GLOB-SUBSTRING]
//! ```

use livetrace_reloc::Image;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: why_not ELF [NAME-SUBSTRING]");
        std::process::exit(2);
    };
    let filter = args.next();
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    };
    let image = match Image::parse(&data) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    };
    for c in image.candidates() {
        if filter
            .as_deref()
            .is_some_and(|f| !c.names.iter().any(|n| n.contains(f)))
        {
            continue;
        }
        match &c.verdict {
            Ok(p) => println!(
                "{:#x} {:<40} relocated ({} bytes{})",
                c.addr,
                c.name(),
                p.len(),
                if p.after_endbr() {
                    ", after endbr64"
                } else {
                    ""
                }
            ),
            Err(r) => println!("{:#x} {:<40} {}: {r}", c.addr, c.name(), r.kind()),
        }
    }
    let s = image.summary();
    println!(
        "{} candidates, {} excluded, {} functions, {} relocatable ({:.1}%)",
        s.candidates,
        s.excluded,
        s.functions,
        s.relocatable,
        s.patchable_pct()
    );
    for (kind, n) in s.reasons {
        println!("  {n:6} {kind}");
    }
}
