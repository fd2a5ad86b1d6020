//! GCRA (generic cell rate algorithm) rate limiting over one timestamp: a token bucket without a refill thread.
//!
//! A limiter allows `rate` units of cost per `period`, with bursts of up to `burst` units. Costs are weights:
//! one request (cost 1) for requests per second, or a call's token count for tokens per minute.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{invalid, Result};

/// Fixed-point time: units per nanosecond. Sub-nanosecond steps keep a very high rate from rounding its
/// per-unit interval down to nothing.
const UNITS_PER_NS: u128 = 1 << 24;
/// The longest span the limiter stores (about 4e13 years): a longer burst capacity or cost interval is capped
/// here, which only ever makes the limiter stricter. Three spans still fit in a `u128`.
const MAX_SPAN: u128 = u128::MAX >> 4;

/// The limiter. All methods take `&self`; the state is one `u128` behind a mutex held for a few instructions
/// (never while sleeping).
///
/// Time is kept in fixed point (1/2^24 ns) with checked arithmetic: every increment is rounded up and the burst
/// capacity down, so rounding never grants more than `burst + rate * elapsed`. At rates so low that a
/// reservation would fall due beyond the range of a [`Duration`] (about 5.8e11 years), [`RateLimiter::reserve`]
/// refuses it with an error instead of wrapping around, and the waits it reports saturate at `Duration::MAX`.
#[derive(Debug)]
pub struct RateLimiter {
    /// Fixed-point units of time one unit of cost consumes (may be huge, or infinite at absurdly low rates).
    interval: f64,
    /// Burst capacity in fixed-point units (`burst * interval`, rounded down, at least 1, at most `MAX_SPAN`).
    tolerance: u128,
    burst: f64,
    rate: f64,
    period: Duration,
    /// Theoretical arrival time, in fixed-point units since `start`.
    tat: Mutex<u128>,
    start: Instant,
    acquired: AtomicU64,
}

/// `x` fixed-point units as a `u128`, capped at `MAX_SPAN` (`as` saturates and maps +inf to the cap too).
fn span(x: f64) -> u128 {
    if x >= MAX_SPAN as f64 {
        MAX_SPAN
    } else {
        x as u128
    }
}

/// Fixed-point units as a `Duration`, rounded up to whole nanoseconds; `None` past `Duration::MAX`.
fn to_duration(units: u128) -> Option<Duration> {
    let nanos = units.div_ceil(UNITS_PER_NS);
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// A `Duration` since the limiter's start as fixed-point units, capped at `MAX_SPAN`.
fn to_units(elapsed: Duration) -> u128 {
    elapsed.as_nanos().saturating_mul(UNITS_PER_NS).min(MAX_SPAN)
}

/// What one GCRA step decided.
enum Step {
    /// Taken; the caller waits this long before using it.
    Taken(Duration),
    /// Not taken (only when waiting was not allowed): the wait it would need, `Duration::MAX` if beyond range.
    Refused(Duration),
}

impl RateLimiter {
    /// `rate` units per `period`, bursts up to `burst` units (`burst >= 1`, usually 1 for smooth pacing).
    pub fn new(rate: f64, period: Duration, burst: f64) -> Result<Self> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(invalid(format!("rate must be a positive number (got {rate})")));
        }
        if period.is_zero() {
            return Err(invalid("period must be longer than zero"));
        }
        if !(burst.is_finite() && burst >= 1.0) {
            return Err(invalid(format!("burst must be at least 1 (got {burst})")));
        }
        let interval = period.as_nanos() as f64 * UNITS_PER_NS as f64 / rate;
        Ok(RateLimiter {
            interval,
            tolerance: span((burst * interval).floor()).max(1),
            burst,
            rate,
            period,
            tat: Mutex::new(0),
            start: Instant::now(),
            acquired: AtomicU64::new(0),
        })
    }

    /// Units allowed per period.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Burst capacity in units.
    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// Successful acquisitions so far.
    pub fn acquired(&self) -> u64 {
        self.acquired.load(Ordering::Relaxed)
    }

    fn now(&self) -> u128 {
        to_units(self.start.elapsed())
    }

    /// The fixed-point time `cost` consumes: rounded up, at least 1, at most the burst capacity (a cost within
    /// the burst never needs more than it).
    fn increment(&self, cost: f64) -> Result<u128> {
        if !(cost.is_finite() && cost > 0.0) {
            return Err(invalid(format!("cost must be a positive number (got {cost})")));
        }
        if cost > self.burst {
            return Err(invalid(format!(
                "cost {cost} exceeds the burst capacity {}; it could never be granted: raise burst or split the cost",
                self.burst
            )));
        }
        Ok(span((cost * self.interval).ceil()).clamp(1, self.tolerance))
    }

    /// The GCRA step at time `now` (fixed-point units since start): advance the theoretical arrival time by
    /// `cost` unless `wait_allowed` is false and the cost is not available now. A reservation due beyond the
    /// range of a `Duration` is refused with an error and changes nothing.
    fn advance_at(&self, now: u128, cost: f64, wait_allowed: bool) -> Result<Step> {
        let increment = self.increment(cost)?;
        let mut tat = self.tat.lock();
        let new_tat = (*tat).max(now).checked_add(increment);
        let wait = new_tat.map(|t| t.saturating_sub(now).saturating_sub(self.tolerance));
        if !wait_allowed && wait != Some(0) {
            return Ok(Step::Refused(wait.and_then(to_duration).unwrap_or(Duration::MAX)));
        }
        match (new_tat, wait.and_then(to_duration)) {
            (Some(new_tat), Some(wait)) => {
                *tat = new_tat;
                drop(tat);
                self.acquired.fetch_add(1, Ordering::Relaxed);
                Ok(Step::Taken(wait))
            }
            _ => Err(invalid(format!(
                "a reservation of {cost} would fall due beyond the clock's range at {} per {:?}; nothing was reserved",
                self.rate, self.period
            ))),
        }
    }

    fn try_acquire_or_wait_at(&self, now: u128, cost: f64) -> Result<Duration> {
        Ok(match self.advance_at(now, cost, false)? {
            Step::Taken(_) => Duration::ZERO,
            Step::Refused(wait) => wait,
        })
    }

    fn reserve_at(&self, now: u128, cost: f64) -> Result<Duration> {
        match self.advance_at(now, cost, true)? {
            Step::Taken(wait) | Step::Refused(wait) => Ok(wait),
        }
    }

    fn time_to_ready_at(&self, now: u128, cost: f64) -> Result<Duration> {
        let increment = self.increment(cost)?;
        let new_tat = (*self.tat.lock()).max(now).checked_add(increment);
        Ok(new_tat
            .and_then(|t| to_duration(t.saturating_sub(now).saturating_sub(self.tolerance)))
            .unwrap_or(Duration::MAX))
    }

    /// Take `cost` now if allowed, else return how long until it would be (without taking anything;
    /// `Duration::MAX` if that is beyond the clock's range).
    pub fn try_acquire_or_wait(&self, cost: f64) -> Result<Duration> {
        self.try_acquire_or_wait_at(self.now(), cost)
    }

    /// Reserve `cost` now, whatever the wait, and return how long the caller must wait before using it.
    ///
    /// Reservations queue up: each one moves the schedule forward by `cost / rate`, so callers that sleep for
    /// the returned time proceed at exactly the target rate even when they wake late. A reservation whose
    /// caller gives up is not returned (the limiter never exceeds its rate; it can only under-use it). A
    /// reservation that would fall due beyond the range of a `Duration` is refused with an error.
    pub fn reserve(&self, cost: f64) -> Result<Duration> {
        self.reserve_at(self.now(), cost)
    }

    /// Take `cost` if allowed now.
    pub fn try_acquire(&self, cost: f64) -> Result<bool> {
        Ok(self.try_acquire_or_wait(cost)?.is_zero())
    }

    /// How long until `cost` could be taken (zero if now, `Duration::MAX` if beyond the clock's range); takes
    /// nothing.
    pub fn time_to_ready(&self, cost: f64) -> Result<Duration> {
        self.time_to_ready_at(self.now(), cost)
    }

    /// Block the calling thread until `cost` is taken, or `timeout` passes (returns false then). A timeout too
    /// long for the clock to represent (such as `Duration::MAX`) is no timeout.
    pub fn acquire_blocking(&self, cost: f64, timeout: Option<Duration>) -> Result<bool> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let wait = self.try_acquire_or_wait(cost)?;
            if wait.is_zero() {
                return Ok(true);
            }
            if let Some(deadline) = deadline {
                // a wait past the end of the clock's range is past any deadline
                if Instant::now().checked_add(wait).map_or(true, |ready| ready > deadline) {
                    return Ok(false);
                }
            }
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn at(seconds: f64) -> u128 {
        to_units(Duration::from_secs_f64(seconds))
    }

    #[test]
    fn burst_then_paced() {
        let limiter = RateLimiter::new(10.0, Duration::from_secs(1), 3.0).unwrap();
        assert_eq!(limiter.try_acquire_or_wait_at(0, 1.0).unwrap(), Duration::ZERO);
        assert_eq!(limiter.try_acquire_or_wait_at(0, 2.0).unwrap(), Duration::ZERO);
        assert_eq!(limiter.try_acquire_or_wait_at(0, 1.0).unwrap(), Duration::from_millis(100));
        assert_eq!(limiter.time_to_ready_at(at(0.03), 1.0).unwrap(), Duration::from_millis(70));
        assert_eq!(limiter.try_acquire_or_wait_at(at(0.1), 1.0).unwrap(), Duration::ZERO);
        assert_eq!(limiter.acquired(), 3);
    }

    #[test]
    fn reservations_queue_at_the_rate() {
        let limiter = RateLimiter::new(100.0, Duration::from_secs(1), 1.0).unwrap();
        let waits: Vec<Duration> = (0..5).map(|_| limiter.reserve_at(0, 1.0).unwrap()).collect();
        let expected: Vec<Duration> = (0..5).map(|i| Duration::from_millis(10 * i)).collect();
        assert_eq!(waits, expected);
        assert!(limiter.try_acquire_or_wait_at(0, 1.0).unwrap() > Duration::ZERO);
    }

    #[test]
    fn rejects_impossible_costs() {
        let limiter = RateLimiter::new(10.0, Duration::from_secs(1), 2.0).unwrap();
        assert!(limiter.try_acquire(3.0).unwrap_err().to_string().contains("exceeds the burst capacity"));
        assert!(limiter.try_acquire(0.0).is_err());
        assert!(RateLimiter::new(0.0, Duration::from_secs(1), 1.0).is_err());
        assert!(RateLimiter::new(1.0, Duration::from_secs(1), 0.5).is_err());
    }

    #[test]
    fn absurdly_low_rates_grant_the_burst_once() {
        for rate in [1e-300, f64::MIN_POSITIVE, 1e-30] {
            let limiter = RateLimiter::new(rate, Duration::from_secs(1), 1.0).unwrap();
            let granted: Vec<bool> = (0..5).map(|_| limiter.try_acquire(1.0).unwrap()).collect();
            assert_eq!(granted, [true, false, false, false, false], "rate {rate}");
            assert_eq!(limiter.time_to_ready(1.0).unwrap(), Duration::MAX);
            assert!(limiter.reserve(1.0).is_err(), "rate {rate}");
            assert_eq!(limiter.acquired(), 1);
        }
    }

    #[test]
    fn low_rates_reserve_far_ahead_without_wrapping() {
        let limiter = RateLimiter::new(1e-10, Duration::from_secs(1), 1.0).unwrap();
        let waits: Vec<f64> = (0..4).map(|_| limiter.reserve_at(0, 1.0).unwrap().as_secs_f64()).collect();
        assert_eq!(waits[0], 0.0);
        for (i, wait) in waits.iter().enumerate().skip(1) {
            let expected = 1e10 * i as f64;
            assert!((wait - expected).abs() <= 1e-6 * expected, "{i}: {wait}");
        }
    }

    #[test]
    fn high_rates_are_not_unlimited() {
        // 1e12 per second is a thousandth of a nanosecond per unit: still counted, not rounded to nothing
        let limiter = RateLimiter::new(1e12, Duration::from_secs(1), 1.0).unwrap();
        let granted = (0..1000).filter(|_| limiter.try_acquire_or_wait_at(at(1e6), 1.0).unwrap().is_zero()).count();
        assert_eq!(granted, 1);
    }

    #[test]
    fn many_threads_respect_the_rate() {
        let limiter = Arc::new(RateLimiter::new(2000.0, Duration::from_secs(1), 1.0).unwrap());
        let run = Duration::from_millis(300);
        let started = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while started.elapsed() < run {
                        if limiter.try_acquire(1.0).unwrap() {
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let elapsed = started.elapsed().as_secs_f64();
        let expected = 2000.0 * elapsed + 1.0;
        // never above the rate (how far below it depends on how much CPU the threads got: not asserted)
        assert!((total as f64) <= expected + 1.0, "{total} > {expected}");
        assert!(total > 0);
        assert_eq!(limiter.acquired(), total);
    }

    /// `10^x` for `x` uniform in `[lo, hi]`: log-uniform.
    fn log_uniform(lo: f64, hi: f64) -> impl Strategy<Value = f64> {
        (lo..=hi).prop_map(|x| 10f64.powf(x))
    }

    /// One operation on a simulated clock: advance the clock by `step` seconds, then take `cost`
    /// (`cost_fraction` of the way from 1 to the burst, log scale) by try_acquire (0), reserve (1), or look
    /// at time_to_ready then try_acquire (2).
    fn op() -> impl Strategy<Value = (u8, f64, f64)> {
        (0u8..3, prop_oneof![2 => Just(0.0), 3 => log_uniform(-12.0, 12.0)], prop_oneof![3 => Just(0.0), 1 => 0.0..=1.0])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Whatever the rate, burst, costs and clock steps: the cost granted (taken or reserved) never exceeds
        /// `burst + rate * t`, where t is the latest time any of it falls due (allowing rounding of one unit);
        /// reservations fall due in order and each wait is finite or refused; time_to_ready agrees with
        /// try_acquire.
        #[test]
        fn never_grants_more_than_the_rate(
            rate in log_uniform(-12.0, 12.0),
            burst in log_uniform(0.0, 12.0),
            per in prop_oneof![Just(1.0), Just(60.0), log_uniform(-6.0, 6.0)],
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let limiter = RateLimiter::new(rate, Duration::from_secs_f64(per), burst).unwrap();
            // the period the limiter enforces: a Duration holds whole nanoseconds, so a period such as
            // 0.000184036284s is 184036 ns there, and the bound must use that one
            let per = limiter.period().as_secs_f64();
            let mut clock = 0.0f64; // seconds
            let mut granted = 0.0f64;
            let mut latest_due = 0.0f64;
            let mut last_reserved_due = 0.0f64;
            for (kind, step, cost_fraction) in ops {
                clock += step;
                let now = at(clock);
                let cost = burst.powf(cost_fraction).min(burst);
                match kind {
                    1 => match limiter.reserve_at(now, cost) {
                        Ok(wait) => {
                            prop_assert!(wait < Duration::MAX);
                            let due = clock + wait.as_secs_f64();
                            prop_assert!(due >= last_reserved_due * (1.0 - 1e-12), "{due} < {last_reserved_due}");
                            last_reserved_due = due;
                            latest_due = latest_due.max(due);
                            granted += cost;
                        }
                        Err(err) => prop_assert!(err.to_string().contains("beyond the clock's range"), "{err}"),
                    },
                    _ => {
                        let ready = limiter.time_to_ready_at(now, cost).unwrap();
                        let wait = limiter.try_acquire_or_wait_at(now, cost).unwrap();
                        if kind == 2 {
                            prop_assert_eq!(ready, wait);
                        }
                        if wait.is_zero() {
                            latest_due = latest_due.max(clock);
                            granted += cost;
                        }
                    }
                }
                let bound = (burst + rate * latest_due / per) * (1.0 + 1e-9) + 1.0;
                prop_assert!(granted <= bound, "granted {granted} > {bound} (rate {rate}/{per}s, burst {burst})");
            }
        }
    }
}
