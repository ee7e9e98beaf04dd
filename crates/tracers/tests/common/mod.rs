//! What the tracers' end-to-end tests share.

/// Defines traced Rust functions: for each `stub => body`, a global asm
/// entry stub `stub` (NOP5, then a jump to `body`, as `#[traced]` makes
/// them) in `section`, and its declaration as an
/// `extern "C-unwind" fn(u64) -> u64`.
macro_rules! traced {
    ($section:literal; $($stub:ident => $body:ident),* $(,)?) => {
        std::arch::global_asm!(
            concat!(".pushsection ", $section, ",\"ax\",@progbits"),
            $(
                ".p2align 4",
                concat!(".globl ", stringify!($stub)),
                // Unwind information, as a compiler gives every function
                // (the state at entry holds throughout).
                ".cfi_startproc",
                concat!(stringify!($stub), ": .byte 0x0f,0x1f,0x44,0x00,0x00"),
                concat!("    jmp {", stringify!($body), "}"),
                ".cfi_endproc",
            )*
            ".popsection",
            $($body = sym $body,)*
        );
        unsafe extern "C-unwind" {
            $(fn $stub(n: u64) -> u64;)*
        }
    };
}
pub(crate) use traced;

pub mod coro;
