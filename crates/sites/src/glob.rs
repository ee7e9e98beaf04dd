//! Shell-style name patterns: `*` matches any run of characters (including
//! none and including `::`), `?` matches exactly one character; everything
//! else matches itself. Patterns are matched against whole names.

/// A compiled pattern. Compiling only splits off the literal prefix, which
/// the table uses to narrow a sorted name index before matching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<char>,
    prefix_len: usize,
}

impl Glob {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Glob {
        let pattern: Vec<char> = pattern.chars().collect();
        let prefix_len = pattern
            .iter()
            .position(|&c| c == '*' || c == '?')
            .unwrap_or(pattern.len());
        Glob {
            pattern,
            prefix_len,
        }
    }

    /// The literal text every match starts with.
    pub fn literal_prefix(&self) -> String {
        self.pattern[..self.prefix_len].iter().collect()
    }

    /// Whether the pattern has no wildcard at all (an exact name).
    pub fn is_literal(&self) -> bool {
        self.prefix_len == self.pattern.len()
    }

    /// Whether `name` matches the whole pattern.
    ///
    /// Greedy with one backtrack point (the last `*` seen): a later `*` can
    /// absorb anything an earlier one could, so earlier stars never need to be
    /// revisited, and the match is O(len(name) * len(pattern)) at worst
    /// instead of exponential.
    pub fn matches(&self, name: &str) -> bool {
        let p = &self.pattern;
        let n: Vec<char> = name.chars().collect();
        let (mut pi, mut ni) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while ni < n.len() {
            if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == n[ni])) {
                pi += 1;
                ni += 1;
            } else if pi < p.len() && p[pi] == '*' {
                star = Some((pi, ni));
                pi += 1;
            } else if let Some((sp, sn)) = star {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == '*')
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    fn m(p: &str, n: &str) -> bool {
        Glob::new(p).matches(n)
    }

    #[test]
    fn literals() {
        assert!(m("foo", "foo"));
        assert!(!m("foo", "foob"));
        assert!(!m("foo", "fo"));
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(Glob::new("a::b").is_literal());
    }

    #[test]
    fn star() {
        assert!(m("parser::*", "parser::parse_expr"));
        assert!(m("parser::*", "parser::"));
        assert!(!m("parser::*", "lexer::parser::x"));
        assert!(m("*alloc*", "__rust_alloc"));
        assert!(m("*alloc*", "alloc"));
        assert!(m("*alloc*", "my_alloc_zeroed"));
        assert!(!m("*alloc*", "allo"));
        assert!(m("*", ""));
        assert!(m("a*b*c", "aXbYc"));
        assert!(m("a*b*c", "abbbc"));
        assert!(!m("a*b*c", "acb"));
        assert!(m("*::new", "std::vec::Vec<T>::new"));
        assert!(!m("*::new", "std::vec::Vec<T>::new_in"));
    }

    #[test]
    fn question() {
        assert!(m("f?o", "foo"));
        assert!(!m("f?o", "fo"));
        assert!(m("??", "ab"));
        assert!(m("é?", "éx"));
        assert!(m("*?", "x"));
        assert!(!m("*?", ""));
    }

    #[test]
    fn backtracking_is_not_exponential() {
        let name = "a".repeat(200);
        let pat = format!("{}b", "*a".repeat(30));
        assert!(!m(&pat, &name));
        let pat = "*a".repeat(30);
        assert!(m(&pat, &name));
    }

    #[test]
    fn prefix() {
        assert_eq!(Glob::new("parser::*x").literal_prefix(), "parser::");
        assert_eq!(Glob::new("*x").literal_prefix(), "");
        assert_eq!(Glob::new("ab?").literal_prefix(), "ab");
    }
}
