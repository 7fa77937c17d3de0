//! Per-IP, per-route-group rate limits (fixed one-minute windows). A refused request answers
//! 429 with `Retry-After` set to the seconds left in the window.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::error::ApiError;
use crate::store::now_ms;

/// Route groups with their own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// `POST /api/auth/login`.
    Login,
    /// Every other user-facing route.
    Api,
}

/// The limiter.
pub struct RateLimiter {
    per_min: u32,
    login_per_min: u32,
    windows: Mutex<HashMap<(IpAddr, Group), (u64, u32)>>,
}

impl RateLimiter {
    /// Limits per minute (0 disables a group).
    pub fn new(per_min: u32, login_per_min: u32) -> RateLimiter {
        RateLimiter {
            per_min,
            login_per_min,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request; `Err(429)` when over the budget.
    pub fn check(&self, ip: Option<IpAddr>, group: Group) -> Result<(), ApiError> {
        let limit = match group {
            Group::Login => self.login_per_min,
            Group::Api => self.per_min,
        };
        let Some(ip) = ip else { return Ok(()) };
        if limit == 0 {
            return Ok(());
        }
        let now = now_ms() / 1000;
        let window = now / 60;
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, (w, _)| *w == window);
        }
        let entry = map.entry((ip, group)).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        if entry.1 >= limit {
            return Err(ApiError::rate_limited((window + 1) * 60 - now));
        }
        entry.1 += 1;
        Ok(())
    }
}
