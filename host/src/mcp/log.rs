//! MCP logging (`logging/setLevel`, `notifications/message`): what the server tells a client
//! that asked to hear it: a tool list that changed, a call that hit a limit, was refused for
//! capacity, or failed inside the server. Nothing is sent until the client sets a level.
#![allow(deprecated)] // rmcp marks MCP logging deprecated (SEP-2577); the 2025 protocols have it.

use std::sync::Mutex;

use rmcp::RoleServer;
use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam};
use rmcp::service::Peer;
use serde_json::json;

use crate::sandbox::Status;

use super::results::CallStatus;

/// The levels toolhost sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Info,
    Warning,
    Error,
}

/// One client's chosen level.
#[derive(Default)]
pub struct ClientLog {
    /// The least severe level the client wants, by its rank; `None` until it asks.
    min: Mutex<Option<u8>>,
}

impl ClientLog {
    pub fn set(&self, level: LoggingLevel) {
        *self.min.lock().unwrap_or_else(|p| p.into_inner()) = Some(rank(level));
    }

    /// Sends `message` to the client when it asked for `level` or less severe.
    pub async fn send(&self, peer: &Peer<RoleServer>, level: Level, message: String) {
        let level = match level {
            Level::Info => LoggingLevel::Info,
            Level::Warning => LoggingLevel::Warning,
            Level::Error => LoggingLevel::Error,
        };
        let wanted = self.min.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|min| rank(level) >= min);
        if wanted {
            let param = LoggingMessageNotificationParam::new(level, json!(message)).with_logger("toolhost");
            let _ = peer.notify_logging_message(param).await;
        }
    }
}

/// What a client should hear about a call that ended with `status`, if anything.
pub fn notice(tool: &str, status: CallStatus) -> Option<(Level, String)> {
    let said = match status {
        CallStatus::Ran(Status::Timeout) => (Level::Warning, format!("{tool} hit its time limit")),
        CallStatus::Ran(Status::OutOfMemory) => (Level::Warning, format!("{tool} ran out of memory")),
        CallStatus::Ran(Status::OutOfFuel) => (Level::Warning, format!("{tool} ran out of fuel (its CPU budget)")),
        CallStatus::Busy => (Level::Warning, format!("{tool} was refused: every sandbox slot is busy; retry shortly")),
        CallStatus::NotReady => (Level::Warning, format!("{tool} was refused: the runtime is not ready")),
        CallStatus::InternalError => {
            (Level::Error, format!("{tool} failed inside the server; the server log has the cause"))
        }
        CallStatus::Ran(Status::Ok | Status::Error) | CallStatus::InvalidArguments | CallStatus::Refused => {
            return None;
        }
    };
    Some(said)
}

fn rank(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_our_faults_are_told_and_ordinary_endings_are_not() {
        assert_eq!(notice("t", CallStatus::Ran(Status::Timeout)).map(|n| n.0), Some(Level::Warning));
        assert_eq!(notice("t", CallStatus::InternalError).map(|n| n.0), Some(Level::Error));
        assert!(notice("t", CallStatus::Ran(Status::Ok)).is_none());
        assert!(notice("t", CallStatus::Ran(Status::Error)).is_none(), "a Python exception is in the result");
        assert!(rank(LoggingLevel::Warning) > rank(LoggingLevel::Info));
    }
}
