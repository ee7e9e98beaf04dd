//! Filling a copy's placeholders.

/// Replaces the `LT_INSIDE`/`LT_DROPPED` placeholders in a template's code with
/// the real thread-pointer offsets.
pub(super) fn patch_tls(code: &mut [u8], tpoff: isize) {
    // Each template enters, leaves, and counts a dropped call.
    assert!(
        patch_tls_any(code, tpoff) >= 3,
        "trampoline template placeholders"
    );
}

/// Replaces every `LT_INSIDE`/`LT_DROPPED` placeholder; returns how many.
pub(super) fn patch_tls_any(code: &mut [u8], tpoff: isize) -> usize {
    let tpoff = i32::try_from(tpoff).expect("static TLS offsets fit in 32 bits");
    let mut patched = 0;
    for (placeholder, value) in [(0x5eed_0000u32, tpoff), (0x5eed_0008, tpoff + 8)] {
        let pat = placeholder.to_le_bytes();
        let mut i = 0;
        while i + 4 <= code.len() {
            if code[i..i + 4] == pat {
                code[i..i + 4].copy_from_slice(&value.to_le_bytes());
                patched += 1;
                i += 4;
            } else {
                i += 1;
            }
        }
    }
    patched
}

/// Puts `data` into a template's `movabs rdi, imm64` placeholder, where it
/// has one (the fast template: one load fewer per call).
pub(super) fn patch_data(code: &mut [u8], data: usize) {
    let pat = 0x5eed_5eed_5eed_5eedu64.to_le_bytes();
    if let Some(i) = code.windows(8).position(|w| w == pat) {
        code[i..i + 8].copy_from_slice(&(data as u64).to_le_bytes());
    }
}
