//! Rate limits: a token bucket (GCRA, from `governor`) per principal and route group.
//!
//! The principal is the signed-in user; a call without a valid session is charged to its client
//! address. Each group has its own budget, so a dashboard polling status at 2 Hz never eats into
//! the budget for submissions, and a submission flood never stops the polling:
//!
//! | group | routes | default |
//! |---|---|---|
//! | [`Group::Write`] | every user route that is not `GET`/`HEAD` (submit, execute, upload, cancel, user and token admin) | 100 a minute (burst 100) |
//! | [`Group::Read`] | `GET`/`HEAD` user routes (status, output, lists, workers, me) | 20 a second, burst 40 |
//! | [`Group::Login`] | `POST /api/auth/login` (per client address) | 10 a minute (burst 10) |
//!
//! A refused call answers 429 with `Retry-After` (seconds until one more call fits). Every
//! limited call also carries the `RateLimit-Policy` and `RateLimit` headers of the IETF draft
//! (draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy: "read";q=40;w=2` names the group,
//! its burst (`q`) and the seconds a full burst takes to refill (`w`); `RateLimit: "read";r=39;t=1`
//! gives the calls left now (`r`) and the seconds until the bucket is full again (`t`).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter as Gcra};
use warp::http::{HeaderMap, HeaderValue, Method};

/// Route groups with their own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// `POST /api/auth/login`.
    Login,
    /// State changes: every user route that is not `GET`/`HEAD`.
    Write,
    /// Reads and polls: `GET`/`HEAD` user routes.
    Read,
}

impl Group {
    /// The group a request belongs to.
    pub fn of(method: &Method, path: &str) -> Group {
        if *method == Method::GET || *method == Method::HEAD {
            Group::Read
        } else if path.trim_end_matches('/') == "/api/auth/login" {
            Group::Login
        } else {
            Group::Write
        }
    }

    /// The group's name (policy name in headers, `group` label on metrics).
    pub fn name(self) -> &'static str {
        match self {
            Group::Login => "login",
            Group::Write => "write",
            Group::Read => "read",
        }
    }
}

/// Who a budget belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A signed-in user (by id).
    User(String),
    /// An anonymous caller (or one whose session did not verify), by client address.
    Addr(IpAddr),
}

/// The limiter's state for one call, for the response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The group charged.
    pub group: Group,
    /// The group's burst (calls allowed at once).
    pub quota: u32,
    /// Seconds a whole burst takes to refill.
    pub window_secs: u64,
    /// Calls left right now.
    pub remaining: u32,
    /// Seconds until the bucket is full again (until one call fits, when refused).
    pub reset_secs: u64,
}

impl Verdict {
    /// Adds `RateLimit-Policy` and `RateLimit` to a response.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let name = self.group.name();
        let policy = format!("\"{name}\";q={};w={}", self.quota, self.window_secs);
        let state = format!("\"{name}\";r={};t={}", self.remaining, self.reset_secs);
        if let Ok(v) = HeaderValue::from_str(&policy) {
            headers.insert("ratelimit-policy", v);
        }
        if let Ok(v) = HeaderValue::from_str(&state) {
            headers.insert("ratelimit", v);
        }
    }
}

type Keyed<C> = Gcra<Principal, DashMapStateStore<Principal>, C, StateInformationMiddleware>;

/// One group's bucket per principal.
struct Bucket<C: Clock> {
    gcra: Keyed<C>,
    quota: u32,
    /// Time one call's worth of budget takes to come back.
    per_cell: Duration,
}

impl<C: Clock + Clone> Bucket<C> {
    fn new(quota: Option<Quota>, clock: &C) -> Option<Bucket<C>> {
        let quota = quota?;
        Some(Bucket {
            gcra: Gcra::dashmap_with_clock(quota, clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
            quota: quota.burst_size().get(),
            per_cell: quota.replenish_interval(),
        })
    }

    fn window_secs(&self) -> u64 {
        (self.per_cell * self.quota).as_secs_f64().ceil() as u64
    }
}

/// A call over budget: when a call of its group fits again, and the verdict for the headers.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    /// Whole seconds until one call fits again (at least 1).
    pub retry_after: u64,
    /// The verdict (nothing remaining).
    pub verdict: Verdict,
}

/// The budgets of one hub.
pub struct RateLimiter<C: Clock = RuntimeClock> {
    clock: C,
    login: Option<Bucket<C>>,
    write: Option<Bucket<C>>,
    read: Option<Bucket<C>>,
    calls: AtomicU64,
}

/// Per-group budgets (`None` leaves a group unlimited).
#[derive(Debug, Clone, Copy, Default)]
pub struct Budgets {
    /// Writes per minute (also the burst).
    pub write_per_min: u32,
    /// Reads per second.
    pub read_per_sec: u32,
    /// Reads allowed at once.
    pub read_burst: u32,
    /// Logins per minute per address (also the burst).
    pub login_per_min: u32,
}

impl Budgets {
    fn quota(self, group: Group) -> Option<Quota> {
        let per_min = |n: u32| NonZeroU32::new(n).map(Quota::per_minute);
        match group {
            Group::Write => per_min(self.write_per_min),
            Group::Login => per_min(self.login_per_min),
            Group::Read => NonZeroU32::new(self.read_per_sec).map(|r| {
                let burst = NonZeroU32::new(self.read_burst).unwrap_or(r).max(r);
                Quota::per_second(r).allow_burst(burst)
            }),
        }
    }
}

/// The tokio runtime's clock: the real monotonic clock, except in tests that pause it (then the
/// limiter's budgets come back as the test advances time, like every other hub timer).
#[derive(Debug, Clone, Copy, Default)]
pub struct RuntimeClock;

impl Clock for RuntimeClock {
    type Instant = std::time::Instant;

    fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }
}

impl RateLimiter<RuntimeClock> {
    /// The limiter on the runtime's clock; a zero rate leaves its group unlimited.
    pub fn new(budgets: Budgets) -> RateLimiter {
        RateLimiter::with_clock(budgets, RuntimeClock)
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    /// The limiter on a given clock (tests use `governor`'s fake clock).
    pub fn with_clock(budgets: Budgets, clock: C) -> RateLimiter<C> {
        RateLimiter {
            login: Bucket::new(budgets.quota(Group::Login), &clock),
            write: Bucket::new(budgets.quota(Group::Write), &clock),
            read: Bucket::new(budgets.quota(Group::Read), &clock),
            clock,
            calls: AtomicU64::new(0),
        }
    }

    fn bucket(&self, group: Group) -> Option<&Bucket<C>> {
        match group {
            Group::Login => self.login.as_ref(),
            Group::Write => self.write.as_ref(),
            Group::Read => self.read.as_ref(),
        }
    }

    /// Charges one call of `group` to `who`. `Ok(None)` when the group is unlimited;
    /// [`Refused`] (with the verdict for the headers) when over budget.
    pub fn check(&self, who: &Principal, group: Group) -> Result<Option<Verdict>, Refused> {
        let Some(b) = self.bucket(group) else {
            return Ok(None);
        };
        self.forget_idle();
        let window_secs = b.window_secs();
        match b.gcra.check_key(who) {
            Ok(snap) => {
                let remaining = snap.remaining_burst_capacity();
                let empty = b.per_cell * (b.quota - remaining.min(b.quota));
                Ok(Some(Verdict {
                    group,
                    quota: b.quota,
                    window_secs,
                    remaining,
                    reset_secs: empty.as_secs_f64().ceil() as u64,
                }))
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let retry = wait.as_secs_f64().ceil().max(1.0) as u64;
                metrics::counter!("cmdx_rate_limited_total", "group" => group.name()).increment(1);
                let verdict = Verdict {
                    group,
                    quota: b.quota,
                    window_secs,
                    remaining: 0,
                    reset_secs: retry,
                };
                Err(Refused {
                    retry_after: retry,
                    verdict,
                })
            }
        }
    }

    /// Drops the state of principals whose buckets are full again, every 4096 calls, so the map
    /// holds only recently active callers.
    fn forget_idle(&self) {
        if self.calls.fetch_add(1, Ordering::Relaxed) % 4096 != 4095 {
            return;
        }
        for b in [&self.login, &self.write, &self.read].into_iter().flatten() {
            b.gcra.retain_recent();
            b.gcra.shrink_to_fit();
        }
    }

    /// Principals with state held, over all groups (tests and diagnostics).
    pub fn tracked(&self) -> usize {
        [&self.login, &self.write, &self.read]
            .into_iter()
            .flatten()
            .map(|b| b.gcra.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    const DEFAULTS: Budgets = Budgets {
        write_per_min: 100,
        read_per_sec: 20,
        read_burst: 40,
        login_per_min: 10,
    };

    fn user(s: &str) -> Principal {
        Principal::User(s.to_string())
    }

    /// The original browser client: status every 500 ms while a job runs, the worker list every
    /// 5 s, and a submission a minute, for three minutes of (fake) time. Never refused.
    #[test]
    fn a_2hz_poller_with_a_dashboard_is_never_refused() {
        let clock = FakeRelativeClock::default();
        let lim = RateLimiter::with_clock(DEFAULTS, clock.clone());
        let who = user("u1");
        let mut lowest = u32::MAX;
        for tick in 0..360u32 {
            // 180 s at 2 Hz
            let v = lim.check(&who, Group::Read).expect("status poll refused");
            lowest = lowest.min(v.unwrap().remaining);
            if tick % 10 == 0 {
                lim.check(&who, Group::Read).expect("workers list refused");
            }
            if tick % 120 == 0 {
                lim.check(&who, Group::Write).expect("execute refused");
            }
            clock.advance(Duration::from_millis(500));
        }
        assert!(lowest >= 37, "the poller used more than 3 of 40: {lowest}");
    }

    #[test]
    fn a_write_flood_is_refused_with_a_retry_after_and_reads_go_on() {
        let clock = FakeRelativeClock::default();
        let lim = RateLimiter::with_clock(DEFAULTS, clock.clone());
        let who = user("u1");
        let mut ok = 0;
        let refused = loop {
            match lim.check(&who, Group::Write) {
                Ok(_) => ok += 1,
                Err(e) => break e,
            }
            assert!(ok <= 100, "more than the burst of 100 let through");
        };
        assert_eq!(ok, 100);
        let Refused {
            retry_after,
            verdict: v,
        } = refused;
        assert_eq!(retry_after, 1, "one write comes back every 0.6 s");
        assert_eq!((v.quota, v.window_secs, v.remaining), (100, 60, 0));
        // Reads have their own bucket.
        assert!(lim.check(&who, Group::Read).is_ok());
        // 0.6 s later exactly one more write fits.
        clock.advance(Duration::from_millis(600));
        assert!(lim.check(&who, Group::Write).is_ok());
        assert!(lim.check(&who, Group::Write).is_err());
        // After a minute the whole burst is back.
        clock.advance(Duration::from_secs(60));
        let v = lim.check(&who, Group::Write).unwrap().unwrap();
        assert_eq!(v.remaining, 99);
    }

    #[test]
    fn principals_do_not_share_a_budget() {
        let clock = FakeRelativeClock::default();
        let lim = RateLimiter::with_clock(DEFAULTS, clock.clone());
        while lim.check(&user("a"), Group::Read).is_ok() {}
        assert!(lim.check(&user("b"), Group::Read).is_ok());
        let addr = Principal::Addr("10.0.0.1".parse().unwrap());
        assert!(lim.check(&addr, Group::Read).is_ok());
    }

    #[test]
    fn headers_follow_the_draft_and_zero_disables_a_group() {
        let clock = FakeRelativeClock::default();
        let lim = RateLimiter::with_clock(
            Budgets {
                write_per_min: 0,
                ..DEFAULTS
            },
            clock,
        );
        assert_eq!(lim.check(&user("a"), Group::Write).unwrap(), None);
        let v = lim.check(&user("a"), Group::Read).unwrap().unwrap();
        let mut h = HeaderMap::new();
        v.write_headers(&mut h);
        assert_eq!(h["ratelimit-policy"], "\"read\";q=40;w=2");
        assert_eq!(h["ratelimit"], "\"read\";r=39;t=1");
    }

    #[test]
    fn groups_by_method_and_path() {
        assert_eq!(Group::of(&Method::GET, "/api/jobs/status"), Group::Read);
        assert_eq!(Group::of(&Method::HEAD, "/api/jobs/x/output"), Group::Read);
        assert_eq!(Group::of(&Method::POST, "/api/execute"), Group::Write);
        assert_eq!(Group::of(&Method::DELETE, "/api/workers/w"), Group::Write);
        assert_eq!(Group::of(&Method::POST, "/api/auth/login/"), Group::Login);
    }

    #[test]
    fn idle_principals_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let lim = RateLimiter::with_clock(DEFAULTS, clock.clone());
        for i in 0..5000 {
            lim.check(&user(&format!("u{i}")), Group::Read).unwrap();
        }
        clock.advance(Duration::from_secs(5));
        for _ in 0..5000 {
            lim.check(&user("steady"), Group::Write).ok();
        }
        assert!(lim.tracked() < 100, "{} principals kept", lim.tracked());
    }

    #[tokio::test(start_paused = true)]
    async fn budgets_come_back_on_the_runtime_clock() {
        let lim = RateLimiter::new(DEFAULTS);
        let who = user("u1");
        for _ in 0..100 {
            lim.check(&who, Group::Write).expect("within the burst");
        }
        let refused = lim.check(&who, Group::Write).expect_err("over the burst");
        assert_eq!(refused.retry_after, 1);
        assert_eq!(refused.verdict.remaining, 0);
        tokio::time::advance(Duration::from_millis(590)).await;
        assert!(
            lim.check(&who, Group::Write).is_err(),
            "0.59 s is too early"
        );
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(
            lim.check(&who, Group::Write).is_ok(),
            "one write back after 0.6 s"
        );
        assert!(lim.check(&who, Group::Write).is_err());
        tokio::time::advance(Duration::from_secs(60)).await;
        let v = lim.check(&who, Group::Write).unwrap().unwrap();
        assert_eq!(v.remaining, 99, "the whole burst is back after a minute");
        // Logins have their own, stricter budget on the same clock.
        for _ in 0..10 {
            lim.check(&who, Group::Login)
                .expect("within the login budget");
        }
        let refused = lim.check(&who, Group::Login).expect_err("11th login");
        assert_eq!(refused.retry_after, 6);
    }
}
