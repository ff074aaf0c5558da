//! Reading WebSocket frames from a client (RFC 6455 5.2), without a standing read buffer.
//!
//! An idle connection waits on a 2-byte header read into the future's own state; the payload
//! buffer grows with the bytes that actually arrive (never from the length the header claims,
//! which costs a client 14 bytes to state), doubling from 4 KiB and at most 1 MiB at a step, up
//! to the message limit. (fastwebsockets' reader keeps an 8 KiB buffer per connection, twice the
//! memory budget of an idle socket.) The parsing of the header is a pure function, tested on its
//! own.
//!
//! Also owned here: [`PartialBudget`], the node-wide bound on bytes held in messages not yet
//! complete, and [`PartialHold`], one connection's share of it. Every growth of a payload buffer
//! is charged before it is allocated, so many clients that each stall mid-message cannot
//! together hold more than the budget.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes};
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A payload buffer's first allocation (or the whole payload, when smaller).
const FIRST_CHUNK: usize = 4 * 1024;
/// The most a payload buffer grows by at once.
const MAX_STEP: usize = 1024 * 1024;

/// Bytes of partial messages each connection holds outside the node's budget: ordinary
/// messages fit, so a spent budget never refuses them, and what a stalled client holds without
/// being charged is bounded by the number of connections.
pub const FREE_PARTIAL_BYTES: usize = FIRST_CHUNK;

/// The node's budget of bytes held in partially received messages, beyond each connection's
/// [`FREE_PARTIAL_BYTES`].
pub struct PartialBudget {
    charged: AtomicUsize,
    limit: usize,
    /// Every byte held, allowances included.
    gauge: IntGauge,
    refused: IntCounter,
}

impl PartialBudget {
    /// A budget of `limit` bytes; `gauge` follows every byte held, `refused` counts
    /// connections closed for want of budget.
    pub fn new(limit: usize, gauge: IntGauge, refused: IntCounter) -> Arc<PartialBudget> {
        Arc::new(PartialBudget {
            charged: AtomicUsize::new(0),
            limit,
            gauge,
            refused,
        })
    }

    /// Bytes held now by every connection of the node, allowances included.
    pub fn held(&self) -> usize {
        usize::try_from(self.gauge.get()).unwrap_or(0)
    }

    /// Bytes charged to the budget now.
    pub fn charged(&self) -> usize {
        self.charged.load(Ordering::Acquire)
    }

    fn take(&self, n: usize) -> bool {
        let before = self.charged.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > self.limit {
            self.charged.fetch_sub(n, Ordering::AcqRel);
            self.refused.inc();
            return false;
        }
        true
    }

    fn give_back(&self, n: usize) {
        self.charged.fetch_sub(n, Ordering::AcqRel);
    }
}

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One connection's share of the [`PartialBudget`]: the capacity of its payload buffers that
/// hold a message not yet handled. Given back when dropped.
pub struct PartialHold {
    budget: Arc<PartialBudget>,
    bytes: usize,
}

impl PartialHold {
    pub fn new(budget: Arc<PartialBudget>) -> PartialHold {
        PartialHold { budget, bytes: 0 }
    }

    /// Holds `n` more bytes; refused (and counted) when the part beyond the allowance would
    /// exceed the node's budget.
    pub(super) fn grow(&mut self, n: usize) -> Result<(), FrameError> {
        let grown = self.bytes.saturating_add(n);
        let over = grown.saturating_sub(FREE_PARTIAL_BYTES)
            - self.bytes.saturating_sub(FREE_PARTIAL_BYTES);
        if over > 0 && !self.budget.take(over) {
            return Err(FrameError::OverBudget);
        }
        self.budget.gauge.add(as_i64(n));
        self.bytes = grown;
        Ok(())
    }

    /// Lowers what is held to `n` bytes (a buffer was handed on, shrunk or dropped); never
    /// raises it.
    pub fn lower_to(&mut self, n: usize) {
        if n < self.bytes {
            let over = self.bytes.saturating_sub(FREE_PARTIAL_BYTES)
                - n.saturating_sub(FREE_PARTIAL_BYTES);
            self.budget.give_back(over);
            self.budget.gauge.sub(as_i64(self.bytes - n));
            self.bytes = n;
        }
    }

    /// Bytes held by this connection.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for PartialHold {
    fn drop(&mut self) {
        self.lower_to(0);
    }
}

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
    /// RSV1: the first frame of a message compressed with `permessage-deflate`.
    pub compressed: bool,
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
    /// The node's budget for partial messages is spent (close 4100).
    #[error("the node's budget for partial messages is spent")]
    OverBudget,
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
    /// RSV1, allowed only on the first frame of a data message and only with `permessage-deflate`
    /// negotiated (RFC 7692 6).
    pub compressed: bool,
    /// 0..=125, or 126/127 when a 2- or 8-byte length follows.
    pub len7: u8,
}

/// Parses the first two header bytes of a client frame; `deflate`: the connection negotiated
/// `permessage-deflate`, so RSV1 may mark a compressed message.
pub fn parse_head(b: [u8; 2], deflate: bool) -> Result<Head, FrameError> {
    let rsv1 = b[0] & 0x40 != 0;
    if b[0] & 0x30 != 0 || (rsv1 && !deflate) {
        return Err(FrameError::Protocol(
            "reserved bits set (no extension was negotiated)",
        ));
    }
    let opcode = OpCode::from_u8(b[0] & 0x0F).ok_or(FrameError::Protocol("unknown opcode"))?;
    if rsv1 && !matches!(opcode, OpCode::Text | OpCode::Binary) {
        return Err(FrameError::Protocol(
            "RSV1 is set only on the first frame of a data message",
        ));
    }
    let head = Head {
        fin: b[0] & 0x80 != 0,
        opcode,
        masked: b[1] & 0x80 != 0,
        compressed: rsv1,
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

/// Reads one frame; a payload longer than `max` is refused before it is read. The payload
/// buffer is charged to `hold` as it grows (and stays charged: the caller lowers the charge
/// once it has handled or moved the payload). `deflate`: RSV1 may be set (see [`parse_head`]).
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    deflate: bool,
    hold: &mut PartialHold,
) -> Result<Frame, FrameError> {
    let mut two = [0u8; 2];
    r.read_exact(&mut two).await.map_err(io)?;
    let head = parse_head(two, deflate)?;
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
    let mut payload: Vec<u8> = Vec::new();
    while payload.len() < len {
        if payload.len() == payload.capacity() {
            let grown = next_capacity(payload.capacity(), len);
            let more = grown - payload.capacity();
            hold.grow(more)?;
            payload.reserve_exact(more);
        }
        // Never past the frame: the rest of the stream is the next frame's.
        let room = (payload.capacity() - payload.len()).min(len - payload.len());
        let n = r
            .read_buf(&mut (&mut payload).limit(room))
            .await
            .map_err(io)?;
        if n == 0 {
            return Err(FrameError::Eof);
        }
    }
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok(Frame {
        fin: head.fin,
        opcode: head.opcode,
        compressed: head.compressed,
        payload: Bytes::from(payload),
    })
}

/// The capacity a payload buffer of `cap` grows to, for a frame of `len` bytes: doubling from
/// [`FIRST_CHUNK`], by [`MAX_STEP`] at most, never past `len`.
fn next_capacity(cap: usize, len: usize) -> usize {
    let step = cap.clamp(FIRST_CHUNK, MAX_STEP);
    cap.saturating_add(step).min(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn budget(limit: usize) -> Arc<PartialBudget> {
        let gauge = IntGauge::new("held", "held").unwrap();
        let refused = IntCounter::new("refused", "refused").unwrap();
        PartialBudget::new(limit, gauge, refused)
    }

    fn hold() -> PartialHold {
        PartialHold::new(budget(usize::MAX))
    }

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
            let mut hold = hold();
            let f = read_frame(&mut &bytes[..], 100_000, false, &mut hold)
                .await
                .unwrap_or_else(|e| panic!("{len}: {e}"));
            assert_eq!(f.opcode, OpCode::Text);
            assert!(f.fin);
            assert_eq!(&f.payload[..], &payload[..], "{len}");
            assert_eq!(hold.bytes(), len, "the buffer ends exactly at the payload");
        }
    }

    #[tokio::test]
    async fn a_compressed_frame_is_read_as_such_once_the_extension_is_negotiated() {
        let bytes = client_frame(false, 0x41, b"abc");
        let f = read_frame(&mut &bytes[..], 100, true, &mut hold())
            .await
            .unwrap();
        assert!(f.compressed && !f.fin);
        assert_eq!(&f.payload[..], b"abc");
        assert!(matches!(
            read_frame(&mut &bytes[..], 100, false, &mut hold()).await,
            Err(FrameError::Protocol(_))
        ));
    }

    #[tokio::test]
    async fn refuses_oversized_frames_before_reading_them() {
        let bytes = client_frame(true, 0x1, &[b'x'; 2000]);
        assert!(matches!(
            read_frame(&mut &bytes[..2 + 2], 1000, false, &mut hold()).await,
            Err(FrameError::TooBig(2000))
        ));
    }

    #[test]
    fn protocol_violations() {
        assert!(parse_head([0x81, 0x05], false).is_err(), "unmasked");
        assert!(
            parse_head([0xC1, 0x85], false).is_err(),
            "rsv1 without extension"
        );
        assert!(parse_head([0x83, 0x85], false).is_err(), "reserved opcode");
        assert!(parse_head([0x09, 0x80], false).is_err(), "fragmented ping");
        assert!(
            parse_head([0x89, 0xFE], false).is_err(),
            "ping over 125 bytes"
        );
        assert_eq!(
            parse_head([0x01, 0x85], false).ok(),
            Some(Head {
                fin: false,
                opcode: OpCode::Text,
                masked: true,
                compressed: false,
                len7: 5
            })
        );
    }

    #[test]
    fn rsv1_marks_a_compressed_message_only_where_rfc_7692_allows_it() {
        let first = parse_head([0x41, 0x85], true).unwrap();
        assert!(
            first.compressed && !first.fin,
            "first fragment of a compressed message"
        );
        assert!(parse_head([0xC2, 0x85], true).unwrap().compressed, "binary");
        assert!(parse_head([0x80, 0x85], true).is_ok_and(|h| !h.compressed));
        assert!(
            parse_head([0xC0, 0x85], true).is_err(),
            "rsv1 on a continuation"
        );
        assert!(parse_head([0xC9, 0x80], true).is_err(), "rsv1 on a ping");
        assert!(parse_head([0xC8, 0x80], true).is_err(), "rsv1 on a close");
        assert!(
            parse_head([0xA1, 0x85], true).is_err(),
            "rsv2 is never ours"
        );
        assert!(
            parse_head([0x91, 0x85], true).is_err(),
            "rsv3 is never ours"
        );
    }

    #[tokio::test]
    async fn eof_is_not_an_error_to_report() {
        assert!(matches!(
            read_frame(&mut &[0x81u8][..], 10, false, &mut hold()).await,
            Err(FrameError::Eof)
        ));
    }

    #[tokio::test]
    async fn a_stalled_frame_holds_what_arrived_not_what_its_header_claims() {
        let budget = budget(usize::MAX);
        let mut hold = PartialHold::new(budget.clone());
        let frame = client_frame(true, 0x1, &vec![b'x'; 60_000]);
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        // The 14-byte header and mask, then 10 bytes of a 60,000-byte payload.
        client.write_all(&frame[..4 + 4 + 10]).await.unwrap();
        {
            let read = read_frame(&mut server, 100_000, false, &mut hold);
            tokio::pin!(read);
            assert!(futures_util::poll!(read.as_mut()).is_pending());
        }
        assert_eq!(hold.bytes(), FIRST_CHUNK);
        assert_eq!(budget.held(), FIRST_CHUNK);
        assert_eq!(budget.charged(), 0, "within the connection's allowance");
        drop(hold);
        assert_eq!(budget.held(), 0, "given back when the connection ends");
    }

    #[tokio::test]
    async fn a_payload_grows_in_capped_steps_with_what_arrives() {
        let mut cap = 0;
        let mut steps = Vec::new();
        while cap < 5_000_000 {
            cap = next_capacity(cap, 5_000_000);
            steps.push(cap);
        }
        assert_eq!(&steps[..4], &[4096, 8192, 16_384, 32_768]);
        assert!(steps.windows(2).all(|w| w[1] - w[0] <= MAX_STEP));
        assert_eq!(steps.last(), Some(&5_000_000));
        assert_eq!(
            next_capacity(0, 100),
            100,
            "a small payload is allocated at once"
        );
    }

    #[tokio::test]
    async fn growth_past_the_node_budget_is_refused_and_counted() {
        let budget = budget(2_000);
        let mut first = PartialHold::new(budget.clone());
        let bytes = client_frame(true, 0x1, &[b'x'; 6_000]);
        read_frame(&mut &bytes[..], 100_000, false, &mut first)
            .await
            .unwrap();
        assert_eq!(budget.charged(), 6_000 - FREE_PARTIAL_BYTES);
        let mut second = PartialHold::new(budget.clone());
        assert!(matches!(
            read_frame(&mut &bytes[..], 100_000, false, &mut second).await,
            Err(FrameError::OverBudget)
        ));
        assert_eq!(budget.refused.get(), 1);
        assert_eq!(budget.charged(), 6_000 - FREE_PARTIAL_BYTES);
        assert_eq!(
            budget.held(),
            6_000 + FIRST_CHUNK,
            "what was granted stays held"
        );
        // Small messages need no budget, even when it is spent.
        let small = client_frame(true, 0x1, &[b'x'; 1_000]);
        let mut third = PartialHold::new(budget.clone());
        read_frame(&mut &small[..], 100_000, false, &mut third)
            .await
            .unwrap();
        first.lower_to(0);
        drop(second);
        drop(third);
        assert_eq!(budget.held(), 0);
        assert_eq!(budget.charged(), 0);
    }
}
