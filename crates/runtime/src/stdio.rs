//! Guest stdout/stderr: a bounded tail, never the host's console.
//!
//! A guest may print without limit; we keep only the last `capacity` bytes
//! of the current call, so the failure record can show the panic message
//! (the Rust panic hook prints it just before aborting). Writes never fail:
//! a chatty plugin must not trap because its output is bounded.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Shared by the guest's stdout and stderr streams and read by the host.
#[derive(Debug, Clone)]
pub(crate) struct TailBuffer {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    tail: Mutex<Tail>,
    /// Something was written since the last clear: clearing a buffer
    /// nothing was written to (before every record) takes no lock.
    written: AtomicBool,
}

#[derive(Debug)]
struct Tail {
    /// Holds up to `2 * capacity` bytes; trimmed to the last `capacity` on overflow.
    buf: Vec<u8>,
    /// How many trailing bytes are worth keeping.
    capacity: usize,
}

impl TailBuffer {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Shared {
                tail: Mutex::new(Tail {
                    buf: Vec::new(),
                    capacity,
                }),
                written: AtomicBool::new(false),
            }),
        }
    }

    fn push(&self, bytes: &[u8]) {
        // A poisoned lock only means another writer panicked mid-push: the
        // bytes are diagnostics, so keep going with whatever is there.
        let mut tail = self.lock();
        let cap = tail.capacity;
        if cap == 0 {
            return;
        }
        let bytes = &bytes[bytes.len().saturating_sub(cap)..];
        tail.buf.extend_from_slice(bytes);
        self.inner.written.store(true, Ordering::Relaxed);
        if tail.buf.len() > 2 * cap {
            let cut = tail.buf.len() - cap;
            tail.buf.drain(..cut);
        }
    }

    /// The tail written since the last call, as text; clears the buffer.
    pub(crate) fn take(&self) -> String {
        self.inner.written.store(false, Ordering::Relaxed);
        let mut tail = self.lock();
        let start = tail.buf.len().saturating_sub(tail.capacity);
        let text = String::from_utf8_lossy(&tail.buf[start..]).into_owned();
        tail.buf.clear();
        text
    }

    pub(crate) fn clear(&self) {
        if self.inner.written.swap(false, Ordering::Relaxed) {
            self.lock().buf.clear();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.inner
            .tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl IsTerminal for TailBuffer {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TailBuffer {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Large enough that guests write in big chunks; the buffer trims anyway.
const WRITE_BUDGET: usize = 64 * 1024;

impl OutputStream for TailBuffer {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for TailBuffer {
    async fn ready(&mut self) {}
}

impl AsyncWrite for TailBuffer {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
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
    fn keeps_only_the_tail() {
        let t = TailBuffer::new(8);
        for chunk in ["hello ", "wonderful ", "world"] {
            t.push(chunk.as_bytes());
        }
        assert_eq!(t.take(), "ul world");
        assert_eq!(t.take(), "", "take clears");
    }

    #[test]
    fn huge_single_write_is_trimmed() {
        let t = TailBuffer::new(4);
        t.push(&[b'x'; 1_000_000]);
        t.push(b"end!");
        assert_eq!(t.take(), "end!");
    }

    #[test]
    fn clear_empties_what_was_written() {
        let t = TailBuffer::new(8);
        t.clear();
        t.push(b"old");
        t.clear();
        t.clear();
        t.push(b"new");
        assert_eq!(t.take(), "new");
        t.push(b"again");
        t.clear();
        assert_eq!(t.take(), "");
    }
}
