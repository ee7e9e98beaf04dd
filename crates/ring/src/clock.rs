//! The trace clock: `rdtsc` ticks, converted to CLOCK_MONOTONIC nanoseconds
//! by a calibration made once per process.
//!
//! Reading the TSC costs a few ns against ~20 ns for `clock_gettime`, so the
//! hot path stores raw ticks ([`Clock::now`]) and readers convert them
//! ([`Clock::to_ns`]). The conversion is linear, anchored at a
//! (ticks, CLOCK_MONOTONIC) pair measured at calibration, so timestamps from
//! all threads land on the same time line as any CLOCK_MONOTONIC time the
//! program or the outputs use.
//!
//! # Calibration
//!
//! Two anchors ~10 ms apart, each the tightest of 64 `rdtsc`,
//! `clock_gettime`, `rdtsc` brackets (its midpoint is taken). A bracket is
//! ~30-60 ns wide and its midpoint much closer than that to the truth, so
//! the rate is good to a few ppm at worst (on the development VM the
//! converted time was 0.3 µs off CLOCK_MONOTONIC 15 s after calibration).
//! There is no recalibration, so the converted times drift away from
//! CLOCK_MONOTONIC by that rate error plus whatever NTP slews
//! CLOCK_MONOTONIC by later (at most 500 ppm, usually far less): fine for
//! ordering and durations, and for absolute times over seconds to minutes.
//!
//! # Fallback
//!
//! The TSC is used only when it ticks at a constant rate through frequency
//! and idle-state changes (`constant_tsc` and `nonstop_tsc` in the CPU flags)
//! and the kernel itself trusts it (`tsc` is the current clocksource, which
//! it stops being when the kernel finds the TSCs unsynchronised between
//! cores). Otherwise, or when `LIVETRACE_CLOCK=monotonic` is set, or `rdtsc`
//! has been made to fault with `PR_SET_TSC`, the ticks are CLOCK_MONOTONIC
//! nanoseconds themselves and [`Clock::to_ns`] is the identity.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::sys;

/// Where [`Clock::now`] gets its ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The CPU's time-stamp counter, read with `lfence; rdtsc`.
    Tsc,
    /// `clock_gettime(CLOCK_MONOTONIC)`; ticks are nanoseconds.
    Monotonic,
}

/// The environment variable that can force [`Source::Monotonic`] (value
/// `monotonic`; any other value leaves the choice automatic).
pub const ENV_VAR: &str = "LIVETRACE_CLOCK";

/// The process's trace clock. Get it with [`Clock::get`].
#[derive(Debug)]
pub struct Clock {
    source: Source,
    /// Anchor: `base_ticks` ticks were `base_ns` CLOCK_MONOTONIC ns.
    base_ticks: u64,
    base_ns: u64,
    /// Nanoseconds per tick, as a 32.32 fixed-point number.
    mult: u64,
    hz: u64,
    fallback_reason: Option<String>,
    calibration: Duration,
}

static GLOBAL: OnceLock<Clock> = OnceLock::new();

/// How long calibration waits between its two anchors.
const WINDOW: Duration = Duration::from_millis(10);

impl Clock {
    /// The process-wide clock, calibrated by the first call (which takes
    /// ~10 ms; [`crate::Rings::new`] makes that call so that no traced event
    /// pays for it). Every later call is one load and a branch.
    #[inline]
    pub fn get() -> &'static Clock {
        GLOBAL.get_or_init(Clock::calibrate)
    }

    /// Raw ticks: cheap, monotonic on each thread and, on a TSC the kernel
    /// trusts, across threads. Convert with [`Clock::to_ns`].
    ///
    /// The `lfence` before `rdtsc` makes the read wait for earlier loads,
    /// so a thread that observed another thread's store (a lock handover,
    /// a flag) reads a later time than that thread read before its store;
    /// a bare `rdtsc` may execute early and come out a few ns before it.
    #[inline]
    pub fn now(&self) -> u64 {
        match self.source {
            Source::Tsc => rdtsc_ordered(),
            Source::Monotonic => sys::monotonic_ns(),
        }
    }

    /// Ticks now, read without ordering it after earlier instructions: a
    /// plain `rdtsc`, about half the cost of [`Clock::now`] on this kind of
    /// machine. Consecutive reads on one thread are in order, but a read
    /// that follows (by synchronisation) another thread's may come out a
    /// few nanoseconds before it. For per-call timestamps, where that
    /// cross-thread skew is far below what a trace can resolve.
    #[inline]
    pub fn now_unordered(&self) -> u64 {
        match self.source {
            // SAFETY: rdtsc exists on every x86-64 CPU and is enabled for
            // this process, or calibration would have chosen Monotonic.
            Source::Tsc => unsafe { std::arch::x86_64::_rdtsc() },
            Source::Monotonic => sys::monotonic_ns(),
        }
    }

    /// CLOCK_MONOTONIC nanoseconds at which [`Clock::now`] returned `ticks`.
    pub fn to_ns(&self, ticks: u64) -> u64 {
        match self.source {
            Source::Monotonic => ticks,
            Source::Tsc => {
                // Signed and 128-bit: ticks may precede the anchor, and a
                // delta of hours times a 32.32 factor overflows 64 bits.
                let delta = i128::from(ticks) - i128::from(self.base_ticks);
                let ns = i128::from(self.base_ns) + ((delta * i128::from(self.mult)) >> 32);
                ns.clamp(0, i128::from(u64::MAX)) as u64
            }
        }
    }

    /// The conversion's parameters: `(base ticks, base ns, ns per tick as
    /// 32.32 fixed point)`, so another process (a trace file's reader) can
    /// convert this process's ticks exactly as [`Clock::to_ns`] does.
    pub fn calibration(&self) -> (u64, u64, u64) {
        (self.base_ticks, self.base_ns, self.mult)
    }

    /// Which counter [`Clock::now`] reads.
    pub fn source(&self) -> Source {
        self.source
    }

    /// Ticks per second: the calibrated TSC frequency, or 1e9 for
    /// [`Source::Monotonic`].
    pub fn frequency_hz(&self) -> u64 {
        self.hz
    }

    /// Why the TSC is not used, when it is not.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// How long calibration took (zero in fallback mode).
    pub fn calibration_time(&self) -> Duration {
        self.calibration
    }

    fn calibrate() -> Clock {
        let env = std::env::var(ENV_VAR).ok();
        let reason = tsc_unusable(
            env.as_deref(),
            std::fs::read_to_string("/proc/cpuinfo").ok().as_deref(),
            std::fs::read_to_string(
                "/sys/devices/system/clocksource/clocksource0/current_clocksource",
            )
            .ok()
            .as_deref(),
            sys::tsc_enabled(),
        );
        match reason {
            Some(why) => Clock::monotonic(why),
            None => Clock::calibrate_tsc().unwrap_or_else(Clock::monotonic),
        }
    }

    fn monotonic(why: String) -> Clock {
        Clock {
            source: Source::Monotonic,
            base_ticks: 0,
            base_ns: 0,
            mult: 1 << 32,
            hz: 1_000_000_000,
            fallback_reason: Some(why),
            calibration: Duration::ZERO,
        }
    }

    fn calibrate_tsc() -> Result<Clock, String> {
        let started = Instant::now();
        let (t0, n0) = anchor();
        std::thread::sleep(WINDOW);
        let (t1, n1) = anchor();
        let (dt, dn) = (t1.wrapping_sub(t0), n1.saturating_sub(n0));
        if t1 <= t0 || dn == 0 {
            return Err(format!(
                "TSC did not advance during calibration ({t0} -> {t1})"
            ));
        }
        let hz = (u128::from(dt) * 1_000_000_000 / u128::from(dn)) as u64;
        // Far outside anything real means a broken or virtualised-badly TSC.
        if !(10_000_000..=100_000_000_000).contains(&hz) {
            return Err(format!("implausible TSC frequency {hz} Hz"));
        }
        Ok(Clock {
            source: Source::Tsc,
            // The later anchor: closest to the times that will be converted.
            base_ticks: t1,
            base_ns: n1,
            mult: ((u128::from(dn) << 32) / u128::from(dt)) as u64,
            hz,
            fallback_reason: None,
            calibration: started.elapsed(),
        })
    }
}

/// Raw ticks from the process clock: `Clock::get().now()`.
#[inline]
pub fn now() -> u64 {
    Clock::get().now()
}

/// `lfence; rdtsc`, the kernel's `rdtsc_ordered`.
#[inline(always)]
fn rdtsc_ordered() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_lfence, _rdtsc};
        // SAFETY: lfence (SSE2) and rdtsc exist on every x86-64 CPU; rdtsc
        // is not disabled for this process, or calibration would have
        // chosen the monotonic source and this would not be called.
        unsafe {
            _mm_lfence();
            _rdtsc()
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        sys::monotonic_ns()
    }
}

/// One (ticks, ns) anchor: the midpoint of the tightest of 64 brackets, as a
/// preemption or interrupt inside a bracket only ever widens it.
fn anchor() -> (u64, u64) {
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..64 {
        let before = rdtsc_ordered();
        let ns = sys::monotonic_ns();
        let after = rdtsc_ordered();
        let width = after.wrapping_sub(before);
        if width < best.0 {
            best = (width, before + width / 2, ns);
        }
    }
    (best.1, best.2)
}

/// Why the TSC cannot be the trace clock, given the environment variable's
/// value, /proc/cpuinfo, the current clocksource and whether rdtsc is
/// allowed; `None` when it can.
fn tsc_unusable(
    env: Option<&str>,
    cpuinfo: Option<&str>,
    clocksource: Option<&str>,
    rdtsc_allowed: bool,
) -> Option<String> {
    if env.is_some_and(|v| v.trim().eq_ignore_ascii_case("monotonic")) {
        return Some(format!("{ENV_VAR}=monotonic"));
    }
    if !cfg!(target_arch = "x86_64") {
        return Some("not x86-64".into());
    }
    let Some(cpuinfo) = cpuinfo else {
        return Some("cannot read /proc/cpuinfo".into());
    };
    let flags = cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "flags").then_some(value)
        })
        .unwrap_or("");
    for needed in ["constant_tsc", "nonstop_tsc"] {
        if !flags.split_whitespace().any(|f| f == needed) {
            return Some(format!("CPU lacks {needed}"));
        }
    }
    match clocksource.map(str::trim) {
        None => return Some("cannot read the current clocksource".into()),
        Some("tsc") => {}
        Some(other) => return Some(format!("kernel clocksource is {other}, not tsc")),
    }
    if !rdtsc_allowed {
        return Some("rdtsc faults in this process (PR_SET_TSC)".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "processor\t: 0\nflags\t\t: fpu tsc constant_tsc rdtscp nonstop_tsc\n\n\
                        processor\t: 1\nflags\t\t: fpu tsc constant_tsc rdtscp nonstop_tsc\n";

    #[test]
    fn tsc_chosen_only_when_everything_agrees() {
        assert_eq!(tsc_unusable(None, Some(GOOD), Some("tsc\n"), true), None);
        assert_eq!(
            tsc_unusable(Some("auto"), Some(GOOD), Some("tsc\n"), true),
            None
        );
        let why = |env, cpu, cs, ok| tsc_unusable(env, cpu, cs, ok).unwrap_or_default();
        assert!(why(Some("monotonic"), Some(GOOD), Some("tsc"), true).contains(ENV_VAR));
        assert!(why(Some(" MONOTONIC\n"), Some(GOOD), Some("tsc"), true).contains(ENV_VAR));
        assert!(why(
            None,
            Some("flags\t: fpu tsc nonstop_tsc\n"),
            Some("tsc"),
            true
        )
        .contains("constant_tsc"));
        // A substring is not a flag.
        assert!(why(
            None,
            Some("flags\t: constant_tsc nonstop_tsc_x\n"),
            Some("tsc"),
            true
        )
        .contains("nonstop_tsc"));
        assert!(why(None, None, Some("tsc"), true).contains("cpuinfo"));
        assert!(why(None, Some(GOOD), Some("hpet\n"), true).contains("hpet"));
        assert!(why(None, Some(GOOD), Some("kvm-clock"), true).contains("kvm-clock"));
        assert!(why(None, Some(GOOD), None, true).contains("clocksource"));
        assert!(why(None, Some(GOOD), Some("tsc"), false).contains("PR_SET_TSC"));
    }

    #[test]
    fn calibration_is_quick_and_consistent() {
        if Clock::get().source() != Source::Tsc {
            // Nothing to calibrate here; the fallback is covered elsewhere.
            assert_eq!(Clock::get().frequency_hz(), 1_000_000_000);
            return;
        }
        // Under a loaded machine the sleep may overshoot; the best of three
        // still shows what calibration itself costs.
        let clocks: Vec<Clock> = (0..3).map(|_| Clock::calibrate_tsc().unwrap()).collect();
        let fastest = clocks.iter().map(|c| c.calibration).min().unwrap();
        assert!(
            fastest <= Duration::from_millis(20),
            "calibration took {fastest:?}"
        );
        // Independent calibrations agree on the rate to well under 100 ppm.
        let hz: Vec<f64> = clocks.iter().map(|c| c.hz as f64).collect();
        let (lo, hi) = hz
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), &h| (lo.min(h), hi.max(h)));
        assert!((hi - lo) / lo < 100e-6, "calibrated rates disagree: {hz:?}");
        // And on the time line: the same ticks convert to within 2 µs.
        let t = rdtsc_ordered();
        let ns: Vec<u64> = clocks.iter().map(|c| c.to_ns(t)).collect();
        let spread = ns.iter().max().unwrap() - ns.iter().min().unwrap();
        assert!(
            spread < 2_000,
            "conversions disagree by {spread} ns: {ns:?}"
        );
    }

    #[test]
    fn conversion_handles_ticks_before_the_anchor() {
        let c = Clock {
            source: Source::Tsc,
            base_ticks: 1_000_000,
            base_ns: 5_000_000,
            mult: 1 << 31, // 0.5 ns per tick: 2 GHz
            hz: 2_000_000_000,
            fallback_reason: None,
            calibration: Duration::ZERO,
        };
        assert_eq!(c.to_ns(1_000_000), 5_000_000);
        assert_eq!(c.to_ns(1_000_010), 5_000_005);
        assert_eq!(c.to_ns(999_990), 4_999_995);
        assert_eq!(c.to_ns(0), 4_500_000);
        // An hour later does not overflow.
        assert_eq!(
            c.to_ns(1_000_000 + 7_200_000_000_000),
            5_000_000 + 3_600_000_000_000
        );
    }
}
