//! toolhost: a sandboxed code interpreter and tool host for AI agents.
//!
//! The request path, one stage per module (see docs/ARCHITECTURE.md):
//!
//! ```text
//! cli/config ─▶ commands ─▶ sandbox ─▶ outcome
//!                              │
//!        runtime (verified files, cache)   workspace (the session's files)
//! ```
//!
//! - `cli`, `config`: flags, `TOOLHOST_*` variables and `toolhost.toml`, merged into `Settings`.
//! - `runtime`: the pinned guest runtimes: fetched with pip, verified by SHA-256, cached.
//! - `sandbox`: the only module that knows wasmtime; one fresh instance per call.
//! - `workspace`: a session's files, with path confinement and quotas.
//! - `commands`: `run`, `runtime`, `bench`.
//!
//! Invariants:
//! - Only `sandbox` imports wasmtime.
//! - A `Store` is never reused: every guest run gets a new one.
//! - The guest sees no host environment variable, no socket, and no host path but its
//!   workspace (read-write), a fresh `/tmp`, the runtime's stdlib and configured roots
//!   (read-only).
//! - Every limit has a default, lives in `sandbox::Limits`, and is enforced in `sandbox`.
//! - Nothing unverified is compiled; nothing we did not write is loaded as compiled code.

pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod mcp;
pub mod progress;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod sessions;
pub mod tools;
pub mod workspace;
