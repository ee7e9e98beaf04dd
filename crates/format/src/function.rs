//! The one row every layer uses for "a traceable function": the core
//! builds it from its record table, the facade returns it, the control
//! socket carries it and the CLI prints it (`livetrace ls`).

/// One traceable function (or one that relocation can make traceable):
/// the `available_filter_functions` row.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Function {
    /// Full (demangled) name.
    pub name: String,
    /// Where a filter names it (`-f 0x…`): its site, or for a function
    /// given a site by prologue relocation, its own entry.
    pub addr: u64,
    /// `file:line` where the compiler or `#[traced]` recorded it, else the
    /// object it lives in.
    pub source: String,
    /// What its site holds: `nop`, `call 0x…`, `unconverted`, with
    /// ` relocated` appended for a relocated function; `relocatable` for a
    /// function without a site that relocation can give one.
    pub state: String,
    /// Its type (`fn(u64) -> u64`) when known (`#[traced]`, non-generic).
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub signature: Option<String>,
    /// The legacy Rust hash of its symbol (`h0123456789abcdef`), which
    /// tells it from others of the same name (`NAME[h…]` in a filter).
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub hash: Option<String>,
}
