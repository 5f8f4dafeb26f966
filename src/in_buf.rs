//! Bytes read from a socket and not yet parsed.
//!
//! Taking a request off the front moves a cursor instead of shifting what
//! follows: a burst of pipelined requests is parsed in place, and the buffer is
//! compacted at most once per read (shifting only the unparsed tail), not once
//! per request.

#[derive(Default)]
pub struct InputBuf {
    bytes: Vec<u8>,
    /// Where the unparsed bytes begin.
    start: usize,
}

impl InputBuf {
    /// The bytes not yet consumed.
    pub fn unread(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    pub fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the buffer holds in memory (for the global buffer budget).
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Marks the first `n` unread bytes as parsed.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.bytes.len());
        if self.start == self.bytes.len() {
            self.bytes.clear();
            self.start = 0;
        }
    }

    pub fn extend(&mut self, data: &[u8]) {
        if self.start > 0 {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        self.bytes.extend_from_slice(data);
    }

    /// Drops the unread bytes, keeping the allocation.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.start = 0;
    }

    /// Drops the unread bytes and gives the allocation back.
    pub fn release(&mut self) {
        *self = InputBuf::default();
    }

    /// The unread bytes, leaving the buffer empty.
    pub fn take(&mut self) -> Vec<u8> {
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.drain(..self.start);
        self.start = 0;
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumed_bytes_are_skipped_and_compacted_on_the_next_read() {
        let mut buf = InputBuf::default();
        buf.extend(b"abcdef");
        buf.consume(2);
        assert_eq!(buf.unread(), b"cdef");
        buf.extend(b"gh");
        assert_eq!((buf.unread(), buf.start), (&b"cdefgh"[..], 0));
        buf.consume(6);
        assert!(buf.is_empty());
        buf.extend(b"xy");
        buf.consume(1);
        assert_eq!(buf.take(), b"y");
        assert!(buf.is_empty());
    }
}
