//! `toolhost worker`: a server's worker process, on the socket it was handed as stdin.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use anyhow::{Context, Result};

pub fn run() -> Result<ExitCode> {
    let socket = std::io::stdin().as_fd().try_clone_to_owned().context("cannot take the worker's socket")?;
    crate::sandbox::serve_worker(UnixStream::from(socket))?;
    Ok(ExitCode::SUCCESS)
}
