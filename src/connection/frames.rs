//! Reading WebSocket frames from a client (RFC 6455 5.2), without a standing read buffer.
//!
//! An idle connection waits on a 2-byte header read into the future's own state; the payload
//! buffer is allocated only once a frame's length is known, and only up to the message limit.
//! (fastwebsockets' reader keeps an 8 KiB buffer per connection, twice the memory budget of an
//! idle socket.) The parsing of the header is a pure function, tested on its own.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_u8(b: u8) -> Option<OpCode> {
        Some(match b {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// One frame from the client, unmasked.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: Bytes,
}

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// RFC 6455 violations: reserved bits, unknown opcode, unmasked client frame, fragmented
    /// or oversized control frame (close 1002).
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// A frame longer than the message limit (close 1009).
    #[error("frame of {0} bytes is over the limit")]
    TooBig(u64),
    #[error("connection closed")]
    Eof,
    #[error("io: {0}")]
    Io(std::io::Error),
}

/// What the first two bytes say.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub fin: bool,
    pub opcode: OpCode,
    pub masked: bool,
    /// 0..=125, or 126/127 when a 2- or 8-byte length follows.
    pub len7: u8,
}

/// Parses the first two header bytes of a client frame.
pub fn parse_head(b: [u8; 2]) -> Result<Head, FrameError> {
    if b[0] & 0x70 != 0 {
        return Err(FrameError::Protocol(
            "reserved bits set (no extension was negotiated)",
        ));
    }
    let opcode = OpCode::from_u8(b[0] & 0x0F).ok_or(FrameError::Protocol("unknown opcode"))?;
    let head = Head {
        fin: b[0] & 0x80 != 0,
        opcode,
        masked: b[1] & 0x80 != 0,
        len7: b[1] & 0x7F,
    };
    if !head.masked {
        return Err(FrameError::Protocol("client frames must be masked"));
    }
    if opcode.is_control() && (!head.fin || head.len7 > 125) {
        return Err(FrameError::Protocol(
            "control frames must be final and at most 125 bytes",
        ));
    }
    Ok(head)
}

fn io(e: std::io::Error) -> FrameError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Eof
    } else {
        FrameError::Io(e)
    }
}

/// Reads one frame; a payload longer than `max` is refused before it is read.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Frame, FrameError> {
    let mut two = [0u8; 2];
    r.read_exact(&mut two).await.map_err(io)?;
    let head = parse_head(two)?;
    let len: u64 = match head.len7 {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).await.map_err(io)?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).await.map_err(io)?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    if len > max as u64 {
        return Err(FrameError::TooBig(len));
    }
    let mut mask = [0u8; 4];
    r.read_exact(&mut mask).await.map_err(io)?;
    // `len <= max`, which is a usize.
    let len = usize::try_from(len).map_err(|_| FrameError::TooBig(len))?;
    let mut payload = BytesMut::zeroed(len);
    r.read_exact(&mut payload).await.map_err(io)?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok(Frame {
        fin: head.fin,
        opcode: head.opcode,
        payload: payload.freeze(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![(u8::from(fin) << 7) | op];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    #[tokio::test]
    async fn reads_and_unmasks_frames_of_every_length_form() {
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let bytes = client_frame(true, 0x1, &payload);
            let f = read_frame(&mut &bytes[..], 100_000)
                .await
                .unwrap_or_else(|e| panic!("{len}: {e}"));
            assert_eq!(f.opcode, OpCode::Text);
            assert!(f.fin);
            assert_eq!(&f.payload[..], &payload[..], "{len}");
        }
    }

    #[tokio::test]
    async fn refuses_oversized_frames_before_reading_them() {
        let bytes = client_frame(true, 0x1, &[b'x'; 2000]);
        assert!(matches!(
            read_frame(&mut &bytes[..2 + 2], 1000).await,
            Err(FrameError::TooBig(2000))
        ));
    }

    #[test]
    fn protocol_violations() {
        assert!(parse_head([0x81, 0x05]).is_err(), "unmasked");
        assert!(parse_head([0xC1, 0x85]).is_err(), "rsv1 without extension");
        assert!(parse_head([0x83, 0x85]).is_err(), "reserved opcode");
        assert!(parse_head([0x09, 0x80]).is_err(), "fragmented ping");
        assert!(parse_head([0x89, 0xFE]).is_err(), "ping over 125 bytes");
        assert_eq!(
            parse_head([0x01, 0x85]).ok(),
            Some(Head {
                fin: false,
                opcode: OpCode::Text,
                masked: true,
                len7: 5
            })
        );
    }

    #[tokio::test]
    async fn eof_is_not_an_error_to_report() {
        assert!(matches!(
            read_frame(&mut &[0x81u8][..], 10).await,
            Err(FrameError::Eof)
        ));
    }
}
