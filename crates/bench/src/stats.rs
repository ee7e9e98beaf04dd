//! Small statistics helpers shared by the benchmarks.

/// Puts fixture functions `0..n` in the record table as `bench::f0`…, so
/// ops and tracers can name them.
pub fn register_fixtures(n: usize) {
    let names: Vec<String> = (0..n).map(|i| format!("bench::f{i}")).collect();
    let sites: Vec<livetrace_sites::ExternalSite<'_>> = names
        .iter()
        .enumerate()
        .map(|(i, name)| livetrace_sites::ExternalSite {
            addr: livetrace_fixtures::site(i),
            name,
            file: file!(),
            line: 0,
        })
        .collect();
    livetrace_ftrace::insert_external(&sites).expect("sites");
}

/// Calls fixture function `i` `n` times; ns per call.
#[inline(never)]
pub fn per_call(i: usize, n: usize) -> f64 {
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(livetrace_fixtures::call(std::hint::black_box(i)));
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// Calls the uninstrumented twin of fixture function `i` `n` times; ns
/// per call.
#[inline(never)]
pub fn per_call_plain(i: usize, n: usize) -> f64 {
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(livetrace_fixtures::call_plain(std::hint::black_box(i)));
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// The median of `v` (sorted in place); 0 for an empty slice.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
