//! toolhost's integration tests: one binary, one module per feature, each through the public
//! API or the real `toolhost` binary. The runtimes come from the real cache (TOOLHOST_CACHE,
//! else ~/.cache/toolhost): the first run fetches and compiles them, later runs load them.

mod capacity;
mod cases;
mod cli;
mod freshness;
mod handles;
mod http_guard;
mod isolation;
mod limits;
mod mcp_client;
mod mcp_http;
mod org_tools;
mod packages;
mod python_clients;
mod python_state;
mod quotas;
mod runtimes;
mod support;
mod workers;
