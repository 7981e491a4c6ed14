//! Every limit a guest run is held to, with its default, in one type. The configured values are
//! a ceiling: a call may ask for less, never for more (`Limits::narrowed`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall clock per call: at the deadline the call is dropped, whether the guest computes (it
    /// yields every few milliseconds of fuel) or waits in a host call such as `time.sleep`.
    #[serde(with = "seconds")]
    pub timeout: Duration,
    /// Instructions (wasmtime fuel) per call. Large enough that the deadline usually comes
    /// first; it bounds work where wall time is cheap to stretch.
    pub fuel: u64,
    /// Linear memory per call, enforced when the guest grows its memory.
    pub memory_bytes: u64,
    /// What the guest may write to each of stdout and stderr; the rest is dropped.
    pub output_bytes: usize,
    /// What a tool result carries of each stream (head and tail); the whole stream is saved in
    /// the workspace when it is cut.
    pub result_output_bytes: usize,
    /// Bytes a workspace may hold.
    pub workspace_bytes: u64,
    /// Files (and folders) a workspace may hold.
    pub workspace_files: u64,
    /// Bytes a call's `/tmp` may hold (its files and folders count against `workspace_files`
    /// too, separately from the workspace's).
    pub tmp_bytes: u64,
    /// Bytes all of one principal's workspaces may hold together (those this process has
    /// opened since it started, until they expire).
    pub principal_disk_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(30),
            fuel: 400_000_000_000,
            memory_bytes: 1 << 30,
            output_bytes: 16 << 20,
            result_output_bytes: 32 << 10,
            workspace_bytes: 256 << 20,
            workspace_files: 2_000,
            tmp_bytes: 128 << 20,
            principal_disk_bytes: 2 << 30,
        }
    }
}

impl Limits {
    /// These limits with a call's own timeout, capped at the configured one.
    pub fn narrowed(&self, timeout: Option<Duration>) -> Limits {
        let mut limits = *self;
        if let Some(asked) = timeout {
            limits.timeout = asked.min(self.timeout);
        }
        limits
    }
}

mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_may_ask_for_less_time_never_more() {
        let limits = Limits::default();
        assert_eq!(limits.narrowed(Some(Duration::from_secs(5))).timeout, Duration::from_secs(5));
        assert_eq!(limits.narrowed(Some(Duration::from_secs(500))).timeout, limits.timeout);
        assert_eq!(limits.narrowed(None), limits);
    }
}
