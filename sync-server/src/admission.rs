//! Who gets one of the sync server's connection slots, and how many: the QUIC side's defence
//! against strangers.
//!
//! Slots come in three classes, each with a global cap and a cap per source address or device,
//! so no single address or device can starve the others:
//!
//! - **handshakes** in flight: bounded in number and time (a handshake that does not finish
//!   in time is dropped). Per address too, so one host cannot take every handshake slot.
//! - **strangers**, connections whose certificate is not enrolled: they may only enroll, so
//!   they get a small share of the slots (per address, a handful), a short deadline and one
//!   small request. A full stranger pool closes the newcomer at once, never an enrolled phone.
//! - **devices**, enrolled phones: most slots. Each device may keep a few connections (a
//!   phone reconnecting after a cut has its old connection linger until its idle timeout);
//!   beyond that, the device's oldest connection is closed in favour of the new one, since the
//!   newest is the one the phone is using.
//!
//! A carrier NAT puts many honest phones behind one address, so the per-address caps apply to
//! handshakes and strangers only, never to enrolled devices, and they are generous enough for
//! a team reconnecting at once (handshakes finish within a round trip or two).
//!
//! This module holds no sockets: it counts, and hands back the connections to close. The
//! session layer does the closing.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Caps on the sync server's connections.
#[derive(Clone, Copy, Debug)]
pub struct AdmissionLimits {
    /// Handshakes in flight at once.
    pub max_handshakes: usize,
    /// Handshakes in flight from one source address.
    pub max_handshakes_per_address: usize,
    /// New connections one source address may start per second, on average...
    pub new_connections_per_address_per_second: u32,
    /// ...and at once after a quiet spell (a team's phones reconnecting behind one NAT). A
    /// stranger turned away reconnects at once; without this rate, a few hosts doing so in a
    /// loop keep the handshake slots and the CPU busy with handshakes.
    pub new_connection_burst: u32,
    /// Past this many handshakes in flight, a client whose address is not validated yet is
    /// asked to prove it (a QUIC Retry: one more round trip), so spoofed sources cannot fill
    /// the per-address counts.
    pub validate_addresses_above: usize,
    /// How long a handshake may take: generous for a lossy 2G link, where a lost flight is
    /// sent again after a probe timeout of a few seconds.
    pub handshake_timeout: Duration,
    /// Connections of enrolled devices at once.
    pub max_device_connections: usize,
    /// Connections one enrolled device may keep; a newer one closes its oldest.
    pub max_connections_per_device: usize,
    /// Connections of unenrolled certificates at once (they may only enroll).
    pub max_strangers: usize,
    /// Unenrolled connections from one source address.
    pub max_strangers_per_address: usize,
    /// How long an unenrolled connection lives, whatever it does: long enough to send one
    /// enrollment request over 2G.
    pub stranger_deadline: Duration,
    /// Largest request frame an unenrolled connection may send (an enrollment is ~30 bytes).
    pub max_stranger_frame: usize,
    /// Requests of enrolled devices decoded (inflated) at once; each may inflate to
    /// `Limits::max_inflated_bytes`, so this bounds the memory that decoding can take.
    pub max_decoding: usize,
    /// How often a code that has had its free wrong tries may be tried again
    /// (see [`crate::enrollment::CodeGuard`]).
    pub code_cooldown: Duration,
}

impl Default for AdmissionLimits {
    fn default() -> AdmissionLimits {
        AdmissionLimits {
            max_handshakes: 256,
            max_handshakes_per_address: 64,
            new_connections_per_address_per_second: 20,
            new_connection_burst: 64,
            validate_addresses_above: 64,
            handshake_timeout: Duration::from_secs(20),
            max_device_connections: 1024,
            max_connections_per_device: 4,
            max_strangers: 64,
            max_strangers_per_address: 4,
            stranger_deadline: Duration::from_secs(20),
            max_stranger_frame: 1024,
            max_decoding: 8,
            code_cooldown: Duration::from_secs(60),
        }
    }
}

/// Why a connection got no slot. Every one is temporary: the device tries again later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    /// Every handshake slot is taken.
    #[error("too many connections are being set up; try again shortly")]
    Handshakes,
    /// This address has too many handshakes in flight.
    #[error("too many connections are being set up from this address; try again shortly")]
    HandshakesFromAddress,
    /// This address starts new connections faster than its rate.
    #[error("too many new connections from this address; try again shortly")]
    NewConnectionsFromAddress,
    /// Every slot for unenrolled devices is taken.
    #[error("too many unenrolled devices are connected; try again shortly")]
    Strangers,
    /// This address has too many unenrolled connections.
    #[error("too many unenrolled devices are connected from this address; try again shortly")]
    StrangersFromAddress,
    /// Every slot for enrolled devices is taken.
    #[error("the server is serving as many devices as it can; try again shortly")]
    Devices,
}

/// The slot counts, shared by every connection. `C` is the handle of a device's connection,
/// which the session closes when a newer one of the same device replaces it.
pub struct Admission<C> {
    limits: AdmissionLimits,
    state: Mutex<State<C>>,
}

struct State<C> {
    handshakes: usize,
    handshakes_by_address: HashMap<IpAddr, usize>,
    new_connections: HashMap<IpAddr, Bucket>,
    strangers: usize,
    strangers_by_address: HashMap<IpAddr, usize>,
    device_connections: usize,
    devices: HashMap<String, VecDeque<(u64, C)>>,
    next_id: u64,
}

/// Addresses whose connection rate is tracked at most; past it, new addresses wait.
const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// A token bucket: `tokens` at instant `at`.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn tokens_at(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        (self.tokens + refill).min(burst)
    }
}

/// What a slot holds, so that dropping it gives back exactly that.
enum Held {
    Handshake(IpAddr),
    Stranger(IpAddr),
    Device { device: String, id: u64 },
}

/// A connection slot; dropping it frees the slot, however the connection ended.
pub struct Slot<C> {
    admission: Arc<Admission<C>>,
    held: Held,
}

impl<C: Clone> Admission<C> {
    /// Empty counts under `limits`.
    pub fn new(limits: AdmissionLimits) -> Arc<Admission<C>> {
        Arc::new(Admission {
            limits,
            state: Mutex::new(State {
                handshakes: 0,
                handshakes_by_address: HashMap::new(),
                new_connections: HashMap::new(),
                strangers: 0,
                strangers_by_address: HashMap::new(),
                device_connections: 0,
                devices: HashMap::new(),
                next_id: 0,
            }),
        })
    }

    /// The caps in force.
    pub fn limits(&self) -> &AdmissionLimits {
        &self.limits
    }

    /// A slot for a handshake from `address` at `now`.
    pub fn handshake(self: &Arc<Self>, address: IpAddr, now: Instant) -> Result<Slot<C>, Busy> {
        let mut state = self.lock();
        if state.handshakes >= self.limits.max_handshakes {
            return Err(Busy::Handshakes);
        }
        if state
            .handshakes_by_address
            .get(&address)
            .is_some_and(|n| *n >= self.limits.max_handshakes_per_address)
        {
            return Err(Busy::HandshakesFromAddress);
        }
        self.take_new_connection(&mut state, address, now)?;
        let from_address = state.handshakes_by_address.entry(address).or_default();
        *from_address += 1;
        state.handshakes += 1;
        Ok(self.slot(Held::Handshake(address)))
    }

    /// Takes one of `address`'s new-connection tokens, refilled at the per-address rate.
    fn take_new_connection(
        &self,
        state: &mut State<C>,
        address: IpAddr,
        now: Instant,
    ) -> Result<(), Busy> {
        let rate = f64::from(self.limits.new_connections_per_address_per_second.max(1));
        let burst = f64::from(self.limits.new_connection_burst.max(1));
        if state.new_connections.len() >= MAX_TRACKED_ADDRESSES {
            // An address whose bucket has refilled is as good as unknown: forget it.
            state
                .new_connections
                .retain(|_, b| b.tokens_at(now, rate, burst) < burst);
            if state.new_connections.len() >= MAX_TRACKED_ADDRESSES {
                return Err(Busy::Handshakes);
            }
        }
        let bucket = state.new_connections.entry(address).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let tokens = bucket.tokens_at(now, rate, burst);
        if tokens < 1.0 {
            return Err(Busy::NewConnectionsFromAddress);
        }
        *bucket = Bucket {
            tokens: tokens - 1.0,
            at: now,
        };
        Ok(())
    }

    /// Whether a client with an unvalidated address should be asked to validate it first.
    pub fn should_validate(&self) -> bool {
        self.lock().handshakes >= self.limits.validate_addresses_above
    }

    /// A slot for an unenrolled connection from `address`.
    pub fn stranger(self: &Arc<Self>, address: IpAddr) -> Result<Slot<C>, Busy> {
        let mut state = self.lock();
        if state.strangers >= self.limits.max_strangers {
            return Err(Busy::Strangers);
        }
        let from_address = state.strangers_by_address.entry(address).or_default();
        if *from_address >= self.limits.max_strangers_per_address {
            return Err(Busy::StrangersFromAddress);
        }
        *from_address += 1;
        state.strangers += 1;
        Ok(self.slot(Held::Stranger(address)))
    }

    /// A slot for a connection of the enrolled `device`, and the device's older connections
    /// that it replaces (the caller closes them).
    pub fn device(
        self: &Arc<Self>,
        device: &str,
        connection: C,
    ) -> Result<(Slot<C>, Vec<C>), Busy> {
        let mut state = self.lock();
        let keep = self.limits.max_connections_per_device.max(1);
        let held_by_device = state.devices.get(device).map_or(0, VecDeque::len);
        // A device at its cap gives up its oldest connections rather than taking more slots.
        let replaced_count = (held_by_device + 1).saturating_sub(keep);
        if state.device_connections - replaced_count >= self.limits.max_device_connections {
            return Err(Busy::Devices);
        }
        let id = state.next_id;
        state.next_id += 1;
        let held = state.devices.entry(device.to_string()).or_default();
        let replaced: Vec<C> = held.drain(..replaced_count).map(|(_, c)| c).collect();
        held.push_back((id, connection));
        state.device_connections = state.device_connections - replaced.len() + 1;
        Ok((
            self.slot(Held::Device {
                device: device.to_string(),
                id,
            }),
            replaced,
        ))
    }

    /// Connections counted now: (handshakes, strangers, devices).
    pub fn counts(&self) -> (usize, usize, usize) {
        let state = self.lock();
        (state.handshakes, state.strangers, state.device_connections)
    }

    fn slot(self: &Arc<Self>, held: Held) -> Slot<C> {
        Slot {
            admission: self.clone(),
            held,
        }
    }

    /// The counts stay consistent whatever panicked while holding them (each update is
    /// complete before anything can panic), so a poisoned lock is simply taken over; refusing
    /// every connection forever would be the worse outcome.
    fn lock(&self) -> MutexGuard<'_, State<C>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<C> Drop for Slot<C> {
    fn drop(&mut self) {
        let mut state = self
            .admission
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &self.held {
            Held::Handshake(address) => {
                state.handshakes = state.handshakes.saturating_sub(1);
                release(&mut state.handshakes_by_address, address);
            }
            Held::Stranger(address) => {
                state.strangers = state.strangers.saturating_sub(1);
                release(&mut state.strangers_by_address, address);
            }
            Held::Device { device, id } => {
                let Some(held) = state.devices.get_mut(device) else {
                    return;
                };
                let before = held.len();
                held.retain(|(held_id, _)| held_id != id);
                let freed = before - held.len();
                if held.is_empty() {
                    state.devices.remove(device);
                }
                // A replaced connection's slot was handed over when it was replaced.
                state.device_connections = state.device_connections.saturating_sub(freed);
            }
        }
    }
}

/// Counts one connection of `address` as gone; an address with none left is forgotten, so
/// the map holds only addresses with live connections.
fn release(by_address: &mut HashMap<IpAddr, usize>, address: &IpAddr) {
    if let Some(count) = by_address.get_mut(address) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            by_address.remove(address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            max_handshakes: 4,
            max_handshakes_per_address: 2,
            validate_addresses_above: 4,
            max_device_connections: 3,
            max_connections_per_device: 2,
            max_strangers: 3,
            max_strangers_per_address: 2,
            ..AdmissionLimits::default()
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn one_address_gets_only_its_share_of_handshakes_and_stranger_slots() {
        let admission = Admission::<u32>::new(limits());
        let a1 = admission.handshake(ip(1), Instant::now()).expect("first");
        let _a2 = admission.handshake(ip(1), Instant::now()).expect("second");
        assert_eq!(
            admission.handshake(ip(1), Instant::now()).err(),
            Some(Busy::HandshakesFromAddress)
        );
        let _b1 = admission
            .handshake(ip(2), Instant::now())
            .expect("another address");
        assert!(!admission.should_validate());
        let _b2 = admission
            .handshake(ip(2), Instant::now())
            .expect("another address");
        assert!(admission.should_validate());
        assert_eq!(
            admission.handshake(ip(3), Instant::now()).err(),
            Some(Busy::Handshakes)
        );
        drop(a1);
        assert!(
            admission.handshake(ip(3), Instant::now()).is_ok(),
            "a freed slot is reused"
        );

        let s1 = admission.stranger(ip(1)).expect("stranger");
        let _s2 = admission.stranger(ip(1)).expect("stranger");
        assert_eq!(
            admission.stranger(ip(1)).err(),
            Some(Busy::StrangersFromAddress)
        );
        let _s3 = admission.stranger(ip(2)).expect("stranger");
        assert_eq!(admission.stranger(ip(4)).err(), Some(Busy::Strangers));
        drop(s1);
        assert!(admission.stranger(ip(4)).is_ok());
    }

    #[test]
    fn an_address_starts_new_connections_at_its_rate_after_a_burst() {
        let admission = Admission::<u32>::new(AdmissionLimits {
            new_connections_per_address_per_second: 10,
            new_connection_burst: 5,
            ..AdmissionLimits::default()
        });
        let start = Instant::now();
        for _ in 0..5 {
            drop(admission.handshake(ip(1), start).expect("the burst"));
        }
        assert_eq!(
            admission.handshake(ip(1), start).err(),
            Some(Busy::NewConnectionsFromAddress)
        );
        assert!(admission.handshake(ip(2), start).is_ok(), "another address");
        let later = start + Duration::from_millis(100);
        assert!(
            admission.handshake(ip(1), later).is_ok(),
            "one token a tenth of a second"
        );
        assert!(admission.handshake(ip(1), later).is_err());
    }

    #[test]
    fn strangers_never_take_an_enrolled_devices_slot() {
        let admission = Admission::<u32>::new(limits());
        let _strangers: Vec<_> = (0..3)
            .map(|i| admission.stranger(ip(i)).expect("stranger"))
            .collect();
        assert_eq!(admission.stranger(ip(9)).err(), Some(Busy::Strangers));
        let (_slot, replaced) = admission
            .device("phone", 1)
            .expect("a device still gets in");
        assert!(replaced.is_empty());
    }

    #[test]
    fn a_devices_newest_connection_replaces_its_oldest_beyond_the_cap() {
        let admission = Admission::<u32>::new(limits());
        let (first, none) = admission.device("phone", 1).expect("first");
        assert!(none.is_empty());
        let (_second, none) = admission.device("phone", 2).expect("second");
        assert!(none.is_empty());
        let (_third, replaced) = admission.device("phone", 3).expect("third");
        assert_eq!(
            replaced,
            vec![1],
            "the oldest connection is handed back to close"
        );
        assert_eq!(
            admission.counts().2,
            2,
            "the device holds two slots, not three"
        );
        // The replaced connection ends later; its slot was already handed over.
        drop(first);
        assert_eq!(admission.counts().2, 2);
        let (_other, _) = admission
            .device("other", 4)
            .expect("room for another device");
        assert_eq!(admission.device("third", 5).err(), Some(Busy::Devices));
    }

    #[test]
    fn dropped_slots_leave_no_counts_or_addresses_behind() {
        let admission = Admission::<u32>::new(limits());
        for round in 0..10u8 {
            let _h = admission
                .handshake(ip(round), Instant::now())
                .expect("handshake");
            let _s = admission.stranger(ip(round)).expect("stranger");
            let _d = admission
                .device(&format!("phone-{round}"), u32::from(round))
                .expect("device");
        }
        assert_eq!(admission.counts(), (0, 0, 0));
        let state = admission.lock();
        assert!(state.handshakes_by_address.is_empty());
        assert!(state.strangers_by_address.is_empty());
        assert!(state.devices.is_empty());
    }

    #[test]
    fn a_poisoned_lock_does_not_refuse_everyone_forever() {
        let admission = Admission::<u32>::new(limits());
        let poisoner = admission.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.state.lock();
            panic!("a bug while holding the counts");
        })
        .join();
        assert!(admission.state.is_poisoned());
        assert!(admission.handshake(ip(1), Instant::now()).is_ok());
        assert!(admission.device("phone", 1).is_ok());
    }
}
