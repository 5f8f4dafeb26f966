//! WebSocket plumbing: the upgrade response, tungstenite driven over our own
//! socket and output queue, and server frames built once for fan-out.
//!
//! tungstenite parses incoming frames (masking, fragmentation, UTF-8, limits) and
//! answers pings and closes; its writes land in the connection's [`OutQueue`],
//! never blocking. Outgoing data frames are built here directly: a server frame is
//! a 2–10 byte header and the unmasked payload, so one event can be framed once
//! and the same bytes queued for every recipient.

use std::io::{self, Read, Write};

use mio::net::TcpStream;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

use crate::out_queue::OutQueue;

/// Largest frame and message accepted from a client (close 1009 beyond).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// tungstenite's per-connection read buffer. Its default (128 KiB) would be
/// allocated for every idle connection; requests are small.
const READ_BUFFER: usize = 4 * 1024;

pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// The server side of a connection whose 101 has been queued; `leftover` holds
/// bytes the client sent after its upgrade request.
pub fn server_context(leftover: Vec<u8>) -> WebSocketContext {
    WebSocketContext::from_partially_read(leftover, Role::Server, Some(config()))
}

/// The 101 response for a validated upgrade request.
pub fn switching_protocols(accept_key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n\r\n"
    )
    .into_bytes()
}

/// A final text frame carrying `payload` (server frames are not masked).
pub fn text_frame(payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = Vec::with_capacity(len + 10);
    out.push(0x81);
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// What tungstenite reads from and writes to: reads come straight from the
/// non-blocking socket (so `WouldBlock` surfaces as usual), writes are appended to
/// the output queue and so never block.
pub struct Io<'a> {
    pub stream: &'a mut TcpStream,
    pub out: &'a mut OutQueue,
    /// Bytes read from the socket through this adapter.
    pub read: usize,
}

impl<'a> Io<'a> {
    pub fn new(stream: &'a mut TcpStream, out: &'a mut OutQueue) -> Io<'a> {
        Io {
            stream,
            out,
            read: 0,
        }
    }
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        self.read += n;
        Ok(n)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers() {
        assert_eq!(&text_frame(b"hi")[..2], &[0x81, 2]);
        let f = text_frame(&[b'a'; 300]);
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
        assert_eq!(f.len(), 304);
        let f = text_frame(&vec![b'a'; 70_000]);
        assert_eq!(f[1], 127);
        assert_eq!(f.len(), 70_010);
    }
}
