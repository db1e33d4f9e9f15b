//! The machine's state as data, for `handoff reexec`: the running handoff exports it, execs
//! the new binary, and that one imports it.
//!
//! Every state type derives serde; an `Instant` cannot be written (it means nothing outside
//! the process that read the clock), so each is written as signed microseconds relative to
//! the `now` given to [`Machine::export`] and read back relative to the `now` given to
//! [`Machine::import`]: a drain deadline 7.2 s away before the exec is 7.2 s away after it,
//! minus the time the exec took. The `now` lives in a thread-local for the length of one
//! export or import, so the fields keep their plain `Instant` types and the machine still
//! reads no clock.

use std::cell::Cell;
use std::time::{Duration, Instant};

use super::Machine;

thread_local! {
    static NOW: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `f` with `now` as the reference of every `Instant` written or read.
fn with_now<T>(now: Instant, f: impl FnOnce() -> T) -> T {
    struct Reset(Option<Instant>);
    impl Drop for Reset {
        fn drop(&mut self) {
            NOW.with(|n| n.set(self.0));
        }
    }
    let _reset = Reset(NOW.with(|n| n.replace(Some(now))));
    f()
}

fn reference() -> Instant {
    NOW.with(|n| n.get())
        .expect("Instants are (de)serialized only inside Machine::export / Machine::import")
}

impl Machine {
    /// The whole state, `Instant`s relative to `now`.
    pub fn export(&self, now: Instant) -> serde_json::Result<serde_json::Value> {
        with_now(now, || serde_json::to_value(self))
    }

    /// The state [`Machine::export`] wrote, `Instant`s relative to `now`.
    pub fn import(state: serde_json::Value, now: Instant) -> serde_json::Result<Machine> {
        let mut m: Machine = with_now(now, || serde_json::from_value(state))?;
        // A memory sample asked for before the exec is never answered: sample anew.
        m.next_sample = Some(now);
        Ok(m)
    }
}

/// `#[serde(with = "snapshot::instant")]`: microseconds from the reference, negative in the
/// past.
pub mod instant {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn to_micros(t: Instant) -> i64 {
        let now = reference();
        if t >= now {
            (t - now).as_micros().min(i64::MAX as u128) as i64
        } else {
            -((now - t).as_micros().min(i64::MAX as u128) as i64)
        }
    }

    pub fn from_micros(us: i64) -> Instant {
        let now = reference();
        let d = Duration::from_micros(us.unsigned_abs());
        if us >= 0 {
            now + d
        } else {
            // Before the clock's origin (a machine up for less than the age of what is
            // restored) cannot happen for states of this boot; saturate rather than panic.
            now.checked_sub(d).unwrap_or(now)
        }
    }

    pub fn serialize<S: Serializer>(t: &Instant, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(to_micros(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Instant, D::Error> {
        Ok(from_micros(i64::deserialize(d)?))
    }
}

/// `#[serde(with = "snapshot::opt_instant")]`.
pub mod opt_instant {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<Instant>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&instant::to_micros(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Instant>, D::Error> {
        Ok(Option::<i64>::deserialize(d)?.map(instant::from_micros))
    }
}

/// `#[serde(with = "snapshot::signal")]`: a signal by its number.
pub mod signal {
    use nix::sys::signal::Signal;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(sig: &Signal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(*sig as i32)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Signal, D::Error> {
        let n = i32::deserialize(d)?;
        Signal::try_from(n).map_err(|e| D::Error::custom(format!("signal {n}: {e}")))
    }
}

/// `#[serde(with = "snapshot::opt_signal")]`.
pub mod opt_signal {
    use nix::sys::signal::Signal;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(sig: &Option<Signal>, s: S) -> Result<S::Ok, S::Error> {
        match sig {
            Some(sig) => s.serialize_some(&(*sig as i32)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Signal>, D::Error> {
        Option::<i32>::deserialize(d)?
            .map(|n| Signal::try_from(n).map_err(|e| D::Error::custom(format!("signal {n}: {e}"))))
            .transpose()
    }
}
