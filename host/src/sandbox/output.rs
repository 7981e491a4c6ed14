//! The guest's stdout and stderr: kept in memory up to a byte cap (16 MiB by default); what comes
//! after is dropped but counted, and the guest's writes always succeed, so a flood never fails
//! the program that makes it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// One captured stream. Clones share the buffer.
#[derive(Clone)]
pub struct Capture {
    inner: Arc<Mutex<Buffer>>,
}

struct Buffer {
    data: Vec<u8>,
    cap: usize,
    dropped: u64,
}

/// What a stream held when the call ended.
#[derive(Debug, Default, Clone)]
pub struct Captured {
    pub data: Vec<u8>,
    /// Bytes written past the cap, dropped.
    pub dropped: u64,
}

impl Capture {
    pub fn new(cap: usize) -> Self {
        Capture { inner: Arc::new(Mutex::new(Buffer { data: Vec::new(), cap, dropped: 0 })) }
    }

    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, bytes: &[u8]) {
        let mut buffer = self.lock();
        let room = buffer.cap.saturating_sub(buffer.data.len());
        let kept = room.min(bytes.len());
        buffer.data.extend_from_slice(&bytes[..kept]);
        buffer.dropped += (bytes.len() - kept) as u64;
    }

    /// The last `n` bytes so far, copied.
    pub fn tail(&self, n: usize) -> Vec<u8> {
        let buffer = self.lock();
        buffer.data[buffer.data.len().saturating_sub(n)..].to_vec()
    }

    /// The bytes so far, leaving the buffer empty.
    pub fn take(&self) -> Captured {
        let mut buffer = self.lock();
        Captured { data: std::mem::take(&mut buffer.data), dropped: buffer.dropped }
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(1 << 20)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl AsyncWrite for Capture {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_past_the_cap_are_dropped_and_counted() {
        let capture = Capture::new(10);
        capture.push(b"0123456");
        capture.push(b"789abcdef");
        let captured = capture.take();
        assert_eq!(captured.data, b"0123456789");
        assert_eq!(captured.dropped, 6);
    }
}
