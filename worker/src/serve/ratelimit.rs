//! Per-client token buckets, for endpoints whose cost is not bounded by admission alone: a flag
//! is written to storage and kept forever, so one client must not be able to fill the folder.
//!
//! Clients are keyed by IP address; IPv6 clients by their /64, since one host usually holds a
//! whole /64 and could otherwise take a fresh bucket per request. A bucket that has refilled
//! completely is the same as no bucket, so the table only keeps clients seen recently; it is
//! bounded, and when it is full of active clients new clients are refused until some refill.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most clients tracked at once.
const MAX_CLIENTS: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets keyed by client address.
#[derive(Debug)]
pub struct KeyedRateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl KeyedRateLimiter {
    /// `per_minute` requests per client per minute on average, up to `burst` at once; `None`
    /// when `per_minute` is 0 (no limit).
    pub fn new(per_minute: u32, burst: u32) -> Option<Self> {
        (per_minute > 0).then(|| Self {
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Take one token for `client` at `now`, or say how long until one is available.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = client_key(client);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(&key) && buckets.len() >= MAX_CLIENTS {
            buckets.retain(|_, b| self.refilled(b, now) < self.burst);
            if buckets.len() >= MAX_CLIENTS {
                return Err(Duration::from_secs(1));
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = self.refilled(bucket, now);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }

    fn refilled(&self, b: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        (b.tokens + elapsed * self.per_second).min(self.burst)
    }
}

/// The address a bucket is kept under: IPv4 as is, IPv6 by its /64 (IPv4-mapped IPv6 as IPv4).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// Whole seconds to put in a `Retry-After` header (at least 1).
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0 || d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_average_rate_per_client() {
        let l = KeyedRateLimiter::new(60, 3).unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            l.check(a, t0).unwrap();
        }
        let wait = l.check(a, t0).unwrap_err();
        assert_eq!(retry_after_secs(wait), 1, "{wait:?}");
        // Another client has its own bucket.
        l.check(b, t0).unwrap();
        // One a second refills.
        l.check(a, t0 + Duration::from_millis(1_000)).unwrap();
        assert!(l.check(a, t0 + Duration::from_millis(1_500)).is_err());
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(3_600);
        for _ in 0..3 {
            l.check(a, later).unwrap();
        }
        assert!(l.check(a, later).is_err());
    }

    #[test]
    fn ipv6_clients_share_their_64_and_zero_means_unlimited() {
        let l = KeyedRateLimiter::new(1, 1).unwrap();
        let t0 = Instant::now();
        l.check("2001:db8::1".parse().unwrap(), t0).unwrap();
        assert!(l.check("2001:db8::ffff:2".parse().unwrap(), t0).is_err());
        l.check("2001:db8:0:1::1".parse().unwrap(), t0).unwrap();
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        l.check(mapped, t0).unwrap();
        assert!(l.check("10.1.2.3".parse().unwrap(), t0).is_err());
        assert!(KeyedRateLimiter::new(0, 5).is_none());
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
    }
}
