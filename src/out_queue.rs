//! A connection's pending output: owned chunks and frames shared by every
//! recipient of a fan-out (serialized and framed once), written with one
//! `writev` per flush.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

/// Bytes waiting for the socket: owned chunks, or frames shared by every recipient
/// of a fan-out (serialized and framed once).
enum Chunk {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(a) => a,
        }
    }
}

/// Small owned writes are appended to the last owned chunk up to this size, so a
/// burst of replies becomes one buffer.
const COALESCE_LIMIT: usize = 16 * 1024;
/// Most slices handed to one `writev`.
const MAX_IOVECS: usize = 64;

/// A connection's pending output.
#[derive(Default)]
pub struct OutQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    head_written: usize,
    /// Bytes queued and not yet written.
    pending: usize,
    /// Bytes ever written to the socket (marks for "written" acknowledgements).
    pub total_written: u64,
    /// Output up to this mark is never dropped (the 101 that opens a WebSocket:
    /// without it nothing after makes sense to the client).
    protected: u64,
}

impl OutQueue {
    pub fn len(&self) -> usize {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Bytes queued so far, counting those already written: a mark that
    /// [`OutQueue::total_written`] reaches once everything queued until now is out.
    pub fn mark(&self) -> u64 {
        self.total_written + self.pending as u64
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.pending += bytes.len();
        if let Some(Chunk::Owned(last)) = self.chunks.back_mut() {
            if last.len() + bytes.len() <= COALESCE_LIMIT {
                last.extend_from_slice(bytes);
                return;
            }
        }
        self.chunks.push_back(Chunk::Owned(bytes.to_vec()));
    }

    pub fn push_shared(&mut self, frame: &Arc<[u8]>) {
        self.pending += frame.len();
        self.chunks.push_back(Chunk::Shared(frame.clone()));
    }

    /// Keeps everything queued so far from [`OutQueue::truncate_unstarted`].
    pub fn protect(&mut self) {
        self.protected = self.mark();
    }

    /// Drops everything not yet started, keeping a partly written chunk so the
    /// stream stays well-formed, and anything protected (used before a final
    /// close frame).
    pub fn truncate_unstarted(&mut self) {
        let keep = if self.head_written > 0 { 1 } else { 0 };
        while self.chunks.len() > keep {
            let len = self.chunks.back().expect("non-empty").bytes().len();
            if self.mark() - (len as u64) < self.protected {
                break;
            }
            self.chunks.pop_back();
            self.pending -= len;
        }
    }

    /// Writes as much as the socket takes. `Ok(true)`: everything is out.
    pub fn write_to(&mut self, sock: &mut impl Write) -> io::Result<bool> {
        while !self.chunks.is_empty() {
            let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            for (i, c) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
                let b = c.bytes();
                slices[i] = IoSlice::new(if i == 0 { &b[self.head_written..] } else { b });
                n += 1;
            }
            let written = match sock.write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.consume(written);
        }
        Ok(true)
    }

    fn consume(&mut self, mut n: usize) {
        self.pending -= n;
        self.total_written += n as u64;
        while n > 0 {
            let front_left = self.chunks[0].bytes().len() - self.head_written;
            if n >= front_left {
                n -= front_left;
                self.chunks.pop_front();
                self.head_written = 0;
            } else {
                self.head_written += n;
                n = 0;
            }
        }
    }
}
