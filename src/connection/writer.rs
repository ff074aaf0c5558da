//! The output side of a WebSocket: drains a connection's outbound queue into the socket,
//! batching whatever is queued into one write, and sends the close sequence (`pusher:error`
//! then the close frame) when the connection ends. It runs inside the connection's one task.
//!
//! Server frames are never masked, so they are encoded here directly into the batch buffer:
//! this lets many small frames go out in one syscall, which fastwebsockets' writer (one write
//! per frame) does not do.

use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::handle::{ConnHandle, Outbound};
use super::Io;
use crate::metrics::AppMetrics;
use crate::protocol::{message, ErrorKind};

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PONG: u8 = 0xA;
/// Stop batching once this much is buffered.
const BATCH_BYTES: usize = 64 * 1024;
/// A buffer grown past this is released after the write, so idle sockets hold no buffer.
const KEEP_BUFFER: usize = 16 * 1024;
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// RSV1 in a frame's first byte: the message is compressed (`permessage-deflate`, RFC 7692 6).
const RSV1: u8 = 0x40;

/// Appends one unmasked, final frame.
pub(crate) fn encode_frame(buf: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    encode_frame_with(buf, opcode, 0, payload);
}

/// Appends one unmasked, final frame with the reserved bits `rsv` set. Server messages are
/// never fragmented, so RSV1 always goes on the message's first (and only) frame.
fn encode_frame_with(buf: &mut Vec<u8>, opcode: u8, rsv: u8, payload: &[u8]) {
    buf.push(0x80 | rsv | opcode);
    let len = payload.len();
    if len < 126 {
        buf.push(len as u8);
    } else if let Ok(len16) = u16::try_from(len) {
        buf.push(126);
        buf.extend_from_slice(&len16.to_be_bytes());
    } else {
        buf.push(127);
        buf.extend_from_slice(&(len as u64).to_be_bytes());
    }
    buf.extend_from_slice(payload);
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    // A close reason is at most 123 bytes (RFC 6455); cut on a char boundary.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

/// The close sequence for `kind`: the `pusher:error` event (4xxx codes) and the close frame.
fn close_sequence(kind: Option<&ErrorKind>) -> Vec<u8> {
    let mut buf = Vec::new();
    match kind {
        Some(k) => {
            if k.sends_error_event() {
                encode_frame(&mut buf, OP_TEXT, &message::error(k, None));
            }
            encode_frame(&mut buf, OP_CLOSE, &close_payload(k.code(), &k.message()));
        }
        None => encode_frame(&mut buf, OP_CLOSE, &close_payload(1000, "")),
    }
    buf
}

/// Encodes `out` into `buf`; returns its payload length.
fn push(buf: &mut Vec<u8>, out: Outbound, metrics: &AppMetrics) -> usize {
    let len = out.len();
    match out {
        Outbound::Text(b) => {
            metrics.ws_messages_sent.inc();
            metrics.socket_transmitted_bytes.inc_by(b.len() as u64);
            encode_frame(buf, OP_TEXT, &b);
        }
        Outbound::Deflated(b) => {
            metrics.ws_messages_sent.inc();
            metrics.socket_transmitted_bytes.inc_by(b.len() as u64);
            encode_frame_with(buf, OP_TEXT, RSV1, &b);
        }
        Outbound::Pong(b) => encode_frame(buf, OP_PONG, &b),
    }
    len
}

/// Drains the outbound queue into `w` until the connection is closing; returns whether the
/// stream is clean (no frame half written), so a close frame can follow. Polled by the
/// connection's task beside its reads: it keeps the task's waker in the handle's writer slot.
pub(super) async fn pump<W: AsyncWrite + Unpin>(
    mut w: W,
    conn: &ConnHandle,
    metrics: &AppMetrics,
) -> bool {
    let mut buf: Vec<u8> = Vec::new();
    // Woken through the handle's waker slot for both new frames and closing: no lock on a
    // wake-up.
    loop {
        let mut batch = conn.take_queued();
        if batch.is_empty() {
            if conn.is_closing() {
                return true;
            }
            conn.queued().await;
            continue;
        }
        while !batch.is_empty() {
            if conn.is_closing() {
                return true;
            }
            buf.clear();
            let mut payload = 0;
            while buf.len() < BATCH_BYTES {
                let Some(m) = batch.pop_front() else { break };
                payload += push(&mut buf, m, metrics);
            }
            let written = tokio::select! {
                r = w.write_all(&buf) => r.is_ok(),
                // A frame may be half written: no close frame can follow it.
                () = conn.closing() => return false,
            };
            if !written {
                return false;
            }
            // Only now: until written, the frames pin memory as much as queued ones.
            conn.written(payload);
        }
        if buf.capacity() > KEEP_BUFFER {
            buf = Vec::new();
        }
    }
}

/// The end of the output side, once [`pump`] returned `clean`: refuses further frames and,
/// unless the client is gone, sends the close sequence and shuts the stream down, each step
/// bounded in time.
pub(super) async fn close<W: AsyncWrite + Unpin>(mut w: W, conn: &ConnHandle, clean: bool) {
    conn.close_queue();
    if conn.is_peer_gone() {
        return;
    }
    if clean {
        // Queued messages are dropped: the connection is closing.
        let seq = close_sequence(conn.close_reason().as_ref());
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let _ = w.write_all(&seq).await;
            let _ = w.flush().await;
        })
        .await;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, w.shutdown()).await;
}

/// Answers a refused handshake (protocol.md 1.2): `pusher:error` then the close frame, nothing else.
pub(super) async fn refuse(io: Io, kind: &ErrorKind) {
    let (_r, mut w) = tokio::io::split(io);
    let seq = close_sequence(Some(kind));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = w.write_all(&seq).await;
        let _ = w.flush().await;
        // Give the client a moment to read the frames before the TCP close.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = w.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lengths_use_the_right_header() {
        let mut b = Vec::new();
        encode_frame(&mut b, OP_TEXT, &[b'x'; 125]);
        assert_eq!(&b[..2], &[0x81, 125]);
        let mut b = Vec::new();
        encode_frame(&mut b, OP_TEXT, &[b'x'; 126]);
        assert_eq!(&b[..4], &[0x81, 126, 0, 126]);
        let mut b = Vec::new();
        encode_frame(&mut b, OP_TEXT, &vec![b'x'; 70_000]);
        assert_eq!(b[1], 127);
        assert_eq!(b.len(), 70_000 + 10);
    }

    #[test]
    fn a_compressed_message_is_one_final_text_frame_with_rsv1() {
        let z = super::super::deflate::deflate(&[b'x'; 1000]).unwrap();
        let mut b = Vec::new();
        encode_frame_with(&mut b, OP_TEXT, RSV1, &z);
        assert_eq!(b[0], 0xC1, "FIN, RSV1, text");
        assert_eq!(usize::from(b[1]), z.len());
        assert_eq!(&b[2..], &z[..]);
    }

    #[test]
    fn close_sequence_has_error_then_close_with_same_code() {
        let seq = close_sequence(Some(&ErrorKind::AppNotFound));
        assert_eq!(seq[0], 0x81);
        let text_len = seq[1] as usize;
        let text = &seq[2..2 + text_len];
        assert!(std::str::from_utf8(text).is_ok_and(|t| t.contains("4001")));
        let close = &seq[2 + text_len..];
        assert_eq!(close[0], 0x88);
        assert_eq!(&close[2..4], &4001u16.to_be_bytes());
        // WebSocket-level closes carry no pusher:error.
        let seq = close_sequence(Some(&ErrorKind::MessageTooBig));
        assert_eq!(seq[0], 0x88);
    }
}
