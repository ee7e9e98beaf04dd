//! The facade's documentation reads as one API: rustdoc builds it with no
//! broken or ambiguous intra-doc link and every public item documented
//! (`missing_docs` is also denied in the crate itself, so the build fails
//! first on an undocumented item).

use std::process::Command;

#[test]
fn the_facade_documents_every_item_and_every_link_resolves() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Its own target directory: the one running this test may be locked.
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("rustdoc");
    let out = Command::new(cargo)
        .args(["doc", "--quiet", "--no-deps", "-p", "livetrace"])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .env(
            "RUSTDOCFLAGS",
            "-D rustdoc::broken_intra_doc_links -D rustdoc::private_intra_doc_links -D missing_docs",
        )
        .output()
        .expect("run cargo doc");
    assert!(
        out.status.success(),
        "cargo doc -p livetrace failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index = target.join("doc/livetrace/index.html");
    let html = std::fs::read_to_string(&index).expect("index.html");
    // The curated API is what the front page shows.
    for item in [
        "fn.trace.html",
        "struct.Config.html",
        "fn.serve.html",
        "raw/index.html",
    ] {
        assert!(html.contains(item), "{item} not on the facade's front page");
    }
}
