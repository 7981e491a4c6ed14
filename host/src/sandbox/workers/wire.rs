//! What the front and a worker process say to each other over their socket pair: frames of a
//! JSON head and a byte blob (`[head length u32][blob length u32][head][blob]`, little-endian),
//! so streams and tool frames cross as bytes, not as JSON arrays.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::super::SandboxConfig;
use super::super::job::{Done, Job};

/// The largest head either side sends (a job's code is in it).
const MAX_HEAD: usize = 64 << 20;
/// The largest blob: two streams at their largest kept size, with room.
const MAX_BLOB: usize = 256 << 20;

/// Which tree a budget request draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tree {
    Workspace,
    Scratch,
}

/// The front to a worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// First and once: what to load.
    Init { config: SandboxConfig, runtimes: Vec<String>, cache_dir: PathBuf },
    /// Run a job; the blob is its stdin.
    Start { job: u64, spec: Job },
    /// Stop a job's guest (its `Done` still comes).
    Cancel { job: u64 },
    /// Whether a budget request was granted.
    Granted { request: u64, granted: bool },
    /// The answer to a guest's `host.call`; the blob is the answer frame.
    Answer { request: u64 },
}

/// A worker to the front.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// Loaded and waiting for jobs.
    Ready { pid: u32 },
    /// A job failed inside the worker (our fault, not the guest's); without a job: the worker
    /// cannot load, and exits.
    Failed { job: Option<u64>, error: String },
    /// A growing write asks for room (`Granted` answers).
    Take { job: u64, request: u64, tree: Tree, bytes: u64, entries: u64 },
    /// A shrinking write gives room back.
    Give { job: u64, tree: Tree, bytes: u64, entries: u64 },
    /// A guest's `host.call`; the blob is the request frame, unless it was too long to read.
    Call { job: u64, request: u64, too_long: Option<usize> },
    /// A job ended; the blob is its stdout then its stderr.
    Done { job: u64, done: Done, stdout_len: usize, stdout_dropped: u64, stderr_dropped: u64, resident_bytes: u64 },
}

/// One frame, ready to write.
pub fn frame<T: Serialize>(head: &T, blob: &[u8]) -> Vec<u8> {
    let head = serde_json::to_vec(head).expect("wire messages serialize");
    let mut out = Vec::with_capacity(8 + head.len() + blob.len());
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&(blob.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(blob);
    out
}

fn lengths(prefix: [u8; 8]) -> Result<(usize, usize)> {
    let head = u32::from_le_bytes(prefix[..4].try_into().expect("4 bytes")) as usize;
    let blob = u32::from_le_bytes(prefix[4..].try_into().expect("4 bytes")) as usize;
    if head > MAX_HEAD || blob > MAX_BLOB {
        bail!("a frame of {head} + {blob} bytes is over the limit: the stream is corrupt");
    }
    Ok((head, blob))
}

fn decode<T: DeserializeOwned>(head: &[u8]) -> Result<T> {
    serde_json::from_slice(head).context("a frame's head is not a message")
}

/// Reads one frame; `None` at the end of the stream.
pub async fn read<T: DeserializeOwned>(reader: &mut (impl AsyncRead + Unpin)) -> Result<Option<(T, Vec<u8>)>> {
    let mut prefix = [0u8; 8];
    match reader.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let (head_len, blob_len) = lengths(prefix)?;
    let mut head = vec![0; head_len];
    reader.read_exact(&mut head).await?;
    let mut blob = vec![0; blob_len];
    reader.read_exact(&mut blob).await?;
    Ok(Some((decode(&head)?, blob)))
}

/// Reads one frame, blocking; `None` at the end of the stream.
pub fn read_blocking<T: DeserializeOwned>(reader: &mut impl Read) -> Result<Option<(T, Vec<u8>)>> {
    let mut prefix = [0u8; 8];
    match reader.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let (head_len, blob_len) = lengths(prefix)?;
    let mut head = vec![0; head_len];
    reader.read_exact(&mut head)?;
    let mut blob = vec![0; blob_len];
    reader.read_exact(&mut blob)?;
    Ok(Some((decode(&head)?, blob)))
}

/// Writes one frame, blocking.
pub fn write_blocking(writer: &mut impl Write, frame: &[u8]) -> std::io::Result<()> {
    writer.write_all(frame)?;
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back_as_written_and_a_corrupt_length_is_refused() {
        let bytes = frame(&ToWorker::Cancel { job: 7 }, b"blob");
        let (message, blob): (ToWorker, Vec<u8>) =
            read_blocking(&mut bytes.as_slice()).expect("reads").expect("one frame");
        assert!(matches!(message, ToWorker::Cancel { job: 7 }));
        assert_eq!(blob, b"blob");
        assert!(read_blocking::<ToWorker>(&mut [].as_slice()).expect("the end").is_none());
        let mut corrupt = bytes.clone();
        corrupt[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_blocking::<ToWorker>(&mut corrupt.as_slice()).is_err());
    }
}
