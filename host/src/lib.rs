//! toolhost: a sandboxed code interpreter and tool host for AI agents, served over MCP.
//!
//! The request path, one stage per module (docs/ARCHITECTURE.md has the whole page):
//!
//! ```text
//! socket ─▶ server ─▶ mcp ─▶ tools ─▶ sandbox ─▶ outcome ─▶ mcp result
//!                       │        │
//!                    sessions  workspace        runtime (verified files, compiled cache)
//! ```
//!
//! Invariants:
//! - Only `sandbox` imports wasmtime; only `server` and `mcp` know HTTP and MCP.
//! - A `Store` is never reused: every guest run gets a new one.
//! - The guest sees no host environment variable, no socket, and no host path but its
//!   workspace (read-write), a fresh `/tmp`, the runtime's stdlib and configured roots
//!   (read-only).
//! - Every limit has a default, lives in `sandbox::Limits`, and is enforced in `sandbox`.
//! - Nothing unverified is compiled; nothing we did not write is loaded as compiled code.
//! - Errors become MCP results in one place, `mcp/results.rs`.

pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod mcp;
pub mod principal;
pub mod progress;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod sessions;
pub mod tools;
pub mod workspace;
pub mod workspaces;
