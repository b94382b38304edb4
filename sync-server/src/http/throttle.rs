//! Limits on dashboard password guessing, and a bound on the argon2 work guessing costs.
//!
//! Every login attempt counts as a failure against three keys until it succeeds (so attempts
//! sent at once are counted as they start, not as they end):
//!
//! - the account *from this address* (`free_per_pair`, e.g. 3): the one aimed at a guesser;
//! - the address, whatever account (`free_per_address`, e.g. 10): one address trying many
//!   accounts;
//! - the account, whatever address (`free_per_account`, e.g. 10): many addresses trying one
//!   account.
//!
//! Past a key's free failures, the next attempt under it must wait `first_delay`, doubling with
//! every further failure up to `max_delay` (a few minutes); a refused attempt is answered 429
//! with `Retry-After` and counts as nothing, so waiting is never made longer by trying. Failures
//! are forgotten `forget_after` the last one; a success clears the account's counts (its own
//! address's count only loses that attempt, so an address that guesses at other accounts stays
//! slowed).
//!
//! A stranger must not be able to lock the real user out for long. Only the per-account key can
//! be driven by someone elsewhere, so it does not apply on an address where the account has
//! logged in before (`remember_success`, e.g. 30 days): there the user meets only their own
//! counts. On a new address the user may have to wait, but never longer than `max_delay` at a
//! time, and their first success anywhere clears it. Behind a reverse proxy every client has the
//! proxy's address; the per-address and per-pair keys then act per account and for everyone.
//!
//! Every map is bounded (`max_entries`): stale entries are swept first, then the oldest go.
//! Account names are kept as a 16-byte digest, so a long made-up name costs no memory.
//!
//! [`LoginGuard::hash`] runs password hashing on the blocking pool, at most `hashers` at once;
//! attempts beyond `hash_queue` more waiting are refused at once (the caller answers 503)
//! instead of piling up behind them.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::conn::address_key;

/// Limits on login attempts and on password hashing.
#[derive(Clone, Copy, Debug)]
pub struct LoginLimits {
    /// Failed logins for one account from one address before the next one must wait.
    pub free_per_pair: u32,
    /// Failed logins from one address, for any accounts, before the next one must wait.
    pub free_per_address: u32,
    /// Failed logins for one account, from any addresses it has not logged in from, before
    /// the next one from such an address must wait.
    pub free_per_account: u32,
    /// The first wait; it doubles with every further failure.
    pub first_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
    /// Failures are forgotten this long after the last one (never sooner than `max_delay`).
    pub forget_after: Duration,
    /// How long a successful login exempts its address from the per-account limit.
    pub remember_success: Duration,
    /// Most entries each map keeps.
    pub max_entries: usize,
    /// Password hashes computed at once.
    pub hashers: usize,
    /// Password checks waiting for a hasher beyond which more are refused.
    pub hash_queue: usize,
}

impl Default for LoginLimits {
    fn default() -> LoginLimits {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        LoginLimits {
            free_per_pair: 3,
            free_per_address: 10,
            free_per_account: 10,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            forget_after: Duration::from_secs(15 * 60),
            remember_success: Duration::from_secs(30 * 86400),
            max_entries: 10_000,
            hashers: cores.clamp(1, 2),
            hash_queue: 16,
        }
    }
}

/// The keys one attempt counts against.
#[derive(Clone, Debug)]
pub struct Attempt {
    account: Account,
    address: IpAddr,
}

type Account = [u8; 16];

/// Password hashing could not start: enough are running and waiting already.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every hasher is busy and the queue is full; try again in a moment.
    #[error("the server is busy checking other logins; try again in a moment")]
    Busy,
    /// The hashing task failed (it panicked, or the runtime is shutting down).
    #[error("password hashing stopped: {0}")]
    Failed(String),
}

/// The login limits of one dashboard: counts of failures and the password hashers.
pub struct LoginGuard {
    limits: LoginLimits,
    state: Mutex<Counts>,
    hashers: Arc<Semaphore>,
    admitted: Arc<Semaphore>,
}

#[derive(Default)]
struct Counts {
    pairs: Strikes<(Account, IpAddr)>,
    addresses: Strikes<IpAddr>,
    accounts: Strikes<Account>,
    /// When each account last logged in from each address.
    known: HashMap<(Account, IpAddr), Instant>,
}

impl LoginGuard {
    pub fn new(limits: LoginLimits) -> LoginGuard {
        let hashers = limits.hashers.max(1);
        LoginGuard {
            limits,
            state: Mutex::new(Counts::default()),
            hashers: Arc::new(Semaphore::new(hashers)),
            admitted: Arc::new(Semaphore::new(hashers + limits.hash_queue)),
        }
    }

    /// Admits an attempt to log in as `user` from `ip`, counting it as failed until
    /// [`LoginGuard::succeeded`] or [`LoginGuard::cancelled`]; or says how long to wait.
    pub fn begin(&self, user: &str, ip: IpAddr, now: Instant) -> Result<Attempt, Duration> {
        let attempt = Attempt {
            account: account_key(user),
            address: address_key(ip),
        };
        let pair = (attempt.account, attempt.address);
        let l = &self.limits;
        let mut counts = self.lock();
        counts.forget_known(l, now);
        let known = counts.known.contains_key(&pair);
        let mut wait = counts.pairs.wait(&pair, l.free_per_pair, l, now);
        wait = wait.max(
            counts
                .addresses
                .wait(&attempt.address, l.free_per_address, l, now),
        );
        if !known {
            wait = wait.max(
                counts
                    .accounts
                    .wait(&attempt.account, l.free_per_account, l, now),
            );
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        counts.pairs.strike(pair, l, now);
        counts.addresses.strike(attempt.address, l, now);
        counts.accounts.strike(attempt.account, l, now);
        Ok(attempt)
    }

    /// The attempt logged in: the account's failures are cleared, and its address is known.
    pub fn succeeded(&self, attempt: &Attempt, now: Instant) {
        let pair = (attempt.account, attempt.address);
        let l = &self.limits;
        let mut counts = self.lock();
        counts.pairs.clear(&pair);
        counts.accounts.clear(&attempt.account);
        counts.addresses.unstrike(&attempt.address);
        if !counts.known.contains_key(&pair) && counts.known.len() >= l.max_entries.max(1) {
            counts.forget_known(l, now);
            evict_oldest(&mut counts.known, |t| *t);
        }
        counts.known.insert(pair, now);
    }

    /// The attempt was never decided (the server was busy or failed): it counts as nothing.
    pub fn cancelled(&self, attempt: &Attempt) {
        let mut counts = self.lock();
        counts.pairs.unstrike(&(attempt.account, attempt.address));
        counts.addresses.unstrike(&attempt.address);
        counts.accounts.unstrike(&attempt.account);
    }

    /// Runs password hashing `work` on the blocking pool, at most `hashers` at once.
    pub async fn hash<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| HashError::Busy)?;
        let hasher = self
            .hashers
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| HashError::Failed(e.to_string()))?;
        // The permits go with the work: if the request is dropped meanwhile, the hash still
        // runs to its end and keeps its place until then.
        tokio::task::spawn_blocking(move || {
            let out = work();
            drop((hasher, admitted));
            out
        })
        .await
        .map_err(|e| HashError::Failed(e.to_string()))
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // Counts are plain numbers changed one statement at a time; a panic elsewhere leaves
        // them usable, so a poisoned lock does not stop every login from then on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Counts {
    fn forget_known(&mut self, limits: &LoginLimits, now: Instant) {
        self.known
            .retain(|_, at| now.saturating_duration_since(*at) < limits.remember_success);
    }
}

/// A user id as the limiter keys it: a digest, so its length costs nothing.
fn account_key(user: &str) -> Account {
    let digest = ring::digest::digest(&ring::digest::SHA256, user.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest.as_ref()[..16]);
    key
}

/// Failures per key.
struct Strikes<K> {
    map: HashMap<K, Strike>,
}

impl<K> Default for Strikes<K> {
    fn default() -> Strikes<K> {
        Strikes {
            map: HashMap::new(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Strike {
    failures: u32,
    last: Instant,
}

impl<K: Hash + Eq + Clone> Strikes<K> {
    /// How long the next attempt under `key` must still wait.
    fn wait(&self, key: &K, free: u32, limits: &LoginLimits, now: Instant) -> Duration {
        let Some(strike) = self.map.get(key) else {
            return Duration::ZERO;
        };
        if strike.failures < free.max(1) || is_forgotten(strike, limits, now) {
            return Duration::ZERO;
        }
        let open_at = strike.last + delay(limits, strike.failures - free.max(1));
        open_at.saturating_duration_since(now)
    }

    fn strike(&mut self, key: K, limits: &LoginLimits, now: Instant) {
        if !self.map.contains_key(&key) && self.map.len() >= limits.max_entries.max(1) {
            self.map.retain(|_, s| !is_forgotten(s, limits, now));
            evict_oldest(&mut self.map, |s| s.last);
        }
        let strike = self.map.entry(key).or_insert(Strike {
            failures: 0,
            last: now,
        });
        if is_forgotten(strike, limits, now) {
            strike.failures = 0;
        }
        strike.failures = strike.failures.saturating_add(1);
        strike.last = now;
    }

    fn unstrike(&mut self, key: &K) {
        if let Some(strike) = self.map.get_mut(key) {
            strike.failures = strike.failures.saturating_sub(1);
            if strike.failures == 0 {
                self.map.remove(key);
            }
        }
    }

    fn clear(&mut self, key: &K) {
        self.map.remove(key);
    }
}

fn is_forgotten(strike: &Strike, limits: &LoginLimits, now: Instant) -> bool {
    now.saturating_duration_since(strike.last) >= limits.forget_after.max(limits.max_delay)
}

/// The wait after `over` failures past the free ones: `first_delay` doubled `over` times, at
/// most `max_delay`.
fn delay(limits: &LoginLimits, over: u32) -> Duration {
    limits
        .first_delay
        .checked_mul(1u32 << over.min(31))
        .unwrap_or(limits.max_delay)
        .min(limits.max_delay)
}

/// Removes the entry with the oldest time while the map is still at its bound.
fn evict_oldest<K: Hash + Eq + Clone, V>(map: &mut HashMap<K, V>, at: impl Fn(&V) -> Instant) {
    if let Some(oldest) = map
        .iter()
        .min_by_key(|(_, v)| at(v))
        .map(|(k, _)| k.clone())
    {
        map.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn limits() -> LoginLimits {
        LoginLimits {
            free_per_pair: 3,
            free_per_address: 10,
            free_per_account: 10,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            forget_after: Duration::from_secs(600),
            remember_success: Duration::from_secs(86400),
            max_entries: 100,
            hashers: 2,
            hash_queue: 2,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// `n` failed attempts at `now`; panics if any is refused.
    fn fail(guard: &LoginGuard, user: &str, from: &str, n: usize, now: Instant) {
        for i in 0..n {
            guard
                .begin(user, ip(from), now)
                .unwrap_or_else(|w| panic!("attempt {i} refused for {w:?}"));
        }
    }

    #[test]
    fn after_the_free_failures_the_wait_doubles_up_to_the_cap() {
        let guard = LoginGuard::new(limits());
        let t0 = Instant::now();
        fail(&guard, "li", "10.0.0.1", 3, t0);
        assert_eq!(
            guard.begin("li", ip("10.0.0.1"), t0).err(),
            Some(Duration::from_secs(1))
        );
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..8 {
            now += guard
                .begin("li", ip("10.0.0.1"), now)
                .err()
                .unwrap_or_default();
            assert!(guard.begin("li", ip("10.0.0.1"), now).is_ok());
            waits.push(
                guard
                    .begin("li", ip("10.0.0.1"), now)
                    .err()
                    .unwrap_or_default(),
            );
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn a_refused_attempt_counts_nothing_and_a_success_clears_the_account() {
        let guard = LoginGuard::new(limits());
        let t0 = Instant::now();
        fail(&guard, "li", "10.0.0.1", 3, t0);
        for _ in 0..20 {
            assert!(guard.begin("li", ip("10.0.0.1"), t0).is_err());
        }
        let later = t0 + Duration::from_secs(1);
        let attempt = guard
            .begin("li", ip("10.0.0.1"), later)
            .expect("after the wait");
        guard.succeeded(&attempt, later);
        fail(&guard, "li", "10.0.0.1", 3, later);
    }

    #[test]
    fn a_stranger_elsewhere_does_not_lock_the_user_out_on_an_address_they_used() {
        let guard = LoginGuard::new(limits());
        let t0 = Instant::now();
        let attempt = guard.begin("li", ip("10.0.0.1"), t0).expect("first");
        guard.succeeded(&attempt, t0);
        // Strangers on many addresses exhaust the account's budget.
        for n in 0..30 {
            let _ = guard.begin("li", ip(&format!("192.0.2.{n}")), t0);
        }
        let wait = guard.begin("li", ip("198.51.100.1"), t0).err();
        assert!(wait.is_some(), "a new address is slowed");
        assert!(
            wait <= Some(limits().max_delay),
            "never longer than the cap"
        );
        // The user's own address is not.
        assert!(guard.begin("li", ip("10.0.0.1"), t0).is_ok());
        // Nor is any other account.
        assert!(guard.begin("wang", ip("198.51.100.1"), t0).is_ok());
    }

    #[test]
    fn one_address_trying_many_accounts_is_slowed() {
        let guard = LoginGuard::new(limits());
        let t0 = Instant::now();
        for n in 0..10 {
            fail(&guard, &format!("user{n}"), "10.0.0.9", 1, t0);
        }
        assert!(guard.begin("user99", ip("10.0.0.9"), t0).is_err());
        assert!(guard.begin("user99", ip("10.0.0.8"), t0).is_ok());
    }

    #[test]
    fn failures_are_forgotten_and_the_maps_stay_bounded() {
        let guard = LoginGuard::new(limits());
        let t0 = Instant::now();
        fail(&guard, "li", "10.0.0.1", 3, t0);
        assert!(guard.begin("li", ip("10.0.0.1"), t0).is_err());
        let later = t0 + limits().forget_after;
        assert!(guard.begin("li", ip("10.0.0.1"), later).is_ok());
        for n in 0..1000u32 {
            let from = IpAddr::from(n.to_be_bytes());
            let _ = guard.begin(&format!("u{n}"), from, later);
        }
        let counts = guard.lock();
        assert!(counts.pairs.map.len() <= 100, "{}", counts.pairs.map.len());
        assert!(counts.addresses.map.len() <= 100);
        assert!(counts.accounts.map.len() <= 100);
    }

    #[test]
    fn a_cancelled_attempt_is_given_back() {
        let guard = LoginGuard::new(limits());
        let t0 = Instant::now();
        for _ in 0..10 {
            let attempt = guard.begin("li", ip("10.0.0.1"), t0).expect("admitted");
            guard.cancelled(&attempt);
        }
        fail(&guard, "li", "10.0.0.1", 3, t0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashing_runs_at_most_k_at_once_and_refuses_past_the_queue() {
        let guard = Arc::new(LoginGuard::new(LoginLimits {
            hashers: 2,
            hash_queue: 1,
            ..limits()
        }));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = Arc::new(Mutex::new(wait));
        let mut jobs = Vec::new();
        for _ in 0..3 {
            let (guard, running, most, wait) =
                (guard.clone(), running.clone(), most.clone(), wait.clone());
            jobs.push(tokio::spawn(async move {
                guard
                    .hash(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        let _ = wait.lock().map(|w| w.recv());
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
            }));
        }
        // Two run, one waits: a fourth finds the queue full.
        while running.load(Ordering::SeqCst) < 2 || guard.admitted.available_permits() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let refused = guard.hash(|| ()).await;
        assert!(matches!(refused, Err(HashError::Busy)), "{refused:?}");
        for _ in 0..3 {
            release.send(()).expect("release");
        }
        for job in jobs {
            job.await.expect("join").expect("hashed");
        }
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "never more than two at once"
        );
    }
}
