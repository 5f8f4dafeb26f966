//! WebSocket frames written and read by hand, for what a well-behaved client
//! library would never send (half a frame, invalid UTF-8, an unfinished
//! message) or never show (a ping, the raw close frame).

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

/// The masking key of [`masked_frame`].
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The head of a client frame: `first` (FIN + opcode), the mask bit with the
/// payload length in its shortest form, and the masking key.
pub fn client_frame_head(first: u8, len: usize, mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![first];
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out
}

/// A whole client frame: masked, with the given first byte (FIN + opcode).
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = client_frame_head(first, payload.len(), MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// One fragment of a text message, for `Ws::send_raw`: the first is a text
/// frame, the others continuations; `last` sets FIN.
pub fn fragment(data: &[u8], first: bool, last: bool) -> Message {
    let op = if first {
        OpData::Text
    } else {
        OpData::Continue
    };
    Message::Frame(Frame::message(data.to_vec(), OpCode::Data(op), last))
}

/// What a raw socket yielded.
#[derive(Debug)]
pub enum Raw {
    /// A complete server frame: opcode and payload.
    Frame(u8, Vec<u8>),
    Eof,
    Nothing,
}

/// The next server frame on a raw socket (`buf` keeps partial input between calls).
pub fn raw_next(s: &mut TcpStream, buf: &mut Vec<u8>, wait: Duration) -> Raw {
    let deadline = Instant::now() + wait;
    loop {
        if buf.len() >= 2 {
            let (len7, mut at) = ((buf[1] & 0x7f) as usize, 2);
            let masked = buf[1] & 0x80 != 0;
            let len = match len7 {
                126 if buf.len() >= 4 => {
                    at = 4;
                    Some(u16::from_be_bytes([buf[2], buf[3]]) as usize)
                }
                127 if buf.len() >= 10 => {
                    at = 10;
                    Some(u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize)
                }
                126 | 127 => None,
                n => Some(n),
            };
            assert!(!masked, "server frames are not masked");
            if let Some(len) = len {
                if buf.len() >= at + len {
                    let op = buf[0] & 0x0f;
                    let payload = buf[at..at + len].to_vec();
                    buf.drain(..at + len);
                    return Raw::Frame(op, payload);
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Raw::Nothing;
        }
        s.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 16 * 1024];
        match s.read(&mut chunk) {
            Ok(0) => return Raw::Eof,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Raw::Eof,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("raw read: {e}"),
        }
    }
}

/// Reads a raw socket to its end (within `wait`): the opcodes seen, the close
/// code if a close frame came, and whether the server closed the socket.
pub fn raw_drain(s: &mut TcpStream, wait: Duration) -> (Vec<u8>, Option<u16>, bool) {
    let deadline = Instant::now() + wait;
    let mut buf = Vec::new();
    let (mut ops, mut code) = (Vec::new(), None);
    loop {
        match raw_next(
            s,
            &mut buf,
            deadline.saturating_duration_since(Instant::now()),
        ) {
            Raw::Frame(op, p) => {
                if op == 8 && p.len() >= 2 {
                    code = Some(u16::from_be_bytes([p[0], p[1]]));
                }
                ops.push(op);
            }
            Raw::Eof => return (ops, code, true),
            Raw::Nothing => return (ops, code, false),
        }
    }
}

/// The code of a close frame, if there was one.
pub fn close_code(c: &Option<CloseFrame>) -> Option<CloseCode> {
    c.as_ref().map(|f| f.code)
}
