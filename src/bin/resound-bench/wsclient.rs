//! One client WebSocket: TCP connect from a chosen loopback source address, the HTTP upgrade,
//! and the split read/write halves the measuring code drives.
//!
//! The upgrade request is written by hand instead of going through hyper's client: the bench
//! keeps thousands of these per process, and owning the raw `TcpStream` lets it split the
//! socket into lock-free halves (`into_split`) and set SO_LINGER for storms. The server's
//! `Sec-WebSocket-Accept` is not checked (that would need SHA-1); the status line is.
//! What this module does not do: interpret Pusher messages (see `payload`).

use anyhow::{bail, Context, Result};
use bytes::{Buf, BytesMut};
use fastwebsockets::{
    FragmentCollectorRead, Frame, OpCode, Payload, Role, WebSocketError, WebSocketWrite,
};
use flate2::{Decompress, FlushDecompress};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpSocket;

use crate::ipc::TargetSpec;

/// Largest HTTP response head the client accepts during the upgrade.
const MAX_HEAD: usize = 16 * 1024;

/// A reader that first yields bytes already read past the HTTP response head (the server may
/// send its first WebSocket frame in the same segment as the `101`). On a connection that
/// negotiated permessage-deflate it also inflates: fastwebsockets refuses frames with RSV1, so
/// every compressed frame is rewritten into the plain frame it stands for before the frame
/// reader sees it.
pub struct Prefixed<R> {
    prefix: BytesMut,
    inner: R,
    inflate: Option<Box<Inflating>>,
}

/// Frames not yet complete, and the inflater (reset per message: the server takes no context
/// over).
struct Inflating {
    raw: BytesMut,
    inflater: Decompress,
}

impl Inflating {
    /// Moves the first complete frame of `raw` into `out`, inflated when RSV1 marks it; false
    /// when no frame is complete yet.
    fn next_frame(&mut self, out: &mut BytesMut) -> io::Result<bool> {
        let Some(&[first, second]) = self.raw.get(..2) else {
            return Ok(false);
        };
        let (head, len) = match second & 0x7F {
            126 => match self.raw.get(2..4) {
                Some(b) => (4, u64::from(u16::from_be_bytes([b[0], b[1]]))),
                None => return Ok(false),
            },
            127 => match self.raw.get(2..10) {
                Some(b) => {
                    let mut len = [0u8; 8];
                    len.copy_from_slice(b);
                    (10, u64::from_be_bytes(len))
                }
                None => return Ok(false),
            },
            n => (2, u64::from(n)),
        };
        let len = usize::try_from(len).map_err(|_| io::Error::other("frame too long"))?;
        if self.raw.len() < head + len {
            return Ok(false);
        }
        let frame = self.raw.split_to(head + len);
        if first & 0x40 == 0 {
            out.extend_from_slice(&frame);
            return Ok(true);
        }
        let mut z = frame[head..].to_vec();
        z.extend_from_slice(&[0, 0, 0xff, 0xff]);
        self.inflater.reset(false);
        let mut plain = Vec::with_capacity(z.len() * 8);
        loop {
            let consumed = usize::try_from(self.inflater.total_in()).unwrap_or(z.len());
            self.inflater
                .decompress_vec(
                    &z[consumed.min(z.len())..],
                    &mut plain,
                    FlushDecompress::Sync,
                )
                .map_err(io::Error::other)?;
            let done = usize::try_from(self.inflater.total_in()).ok() == Some(z.len());
            if done && plain.len() < plain.capacity() {
                break;
            }
            plain.reserve(plain.capacity().max(1024));
        }
        out.extend_from_slice(&[first & !0x40]);
        match plain.len() {
            n if n < 126 => out.extend_from_slice(&[n as u8]),
            n if n <= 0xFFFF => {
                out.extend_from_slice(&[126]);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.extend_from_slice(&[127]);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&plain);
        Ok(true)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Prefixed<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.prefix.is_empty() {
                let n = this.prefix.len().min(buf.remaining());
                buf.put_slice(&this.prefix[..n]);
                this.prefix.advance(n);
                return Poll::Ready(Ok(()));
            }
            let Some(z) = this.inflate.as_mut() else {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            };
            if z.next_frame(&mut this.prefix)? {
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // End of stream: hand over what is left so the frame reader sees it end.
                    let rest = z.raw.split();
                    if rest.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    this.prefix = rest;
                }
                Poll::Ready(Ok(())) => z.raw.extend_from_slice(read.filled()),
                other => return other,
            }
        }
    }
}

/// Whether connection `index` offers permessage-deflate, for a `share` of them spread evenly.
pub fn offers_deflate(share: f64, index: u64) -> bool {
    #[allow(clippy::cast_precision_loss)]
    let at = |i: u64| (i as f64 * share).floor();
    at(index + 1) > at(index)
}

pub type Reader = FragmentCollectorRead<Prefixed<OwnedReadHalf>>;
pub type Writer = WebSocketWrite<OwnedWriteHalf>;

/// Opens a WebSocket to `/app/{key}` on the target from `source` (port chosen by the kernel).
/// With `deflate`, the upgrade offers permessage-deflate and compressed frames are inflated on
/// the way in.
pub async fn connect(
    target: &TargetSpec,
    source: Ipv4Addr,
    zero_linger: bool,
    deflate: bool,
) -> Result<(Reader, Writer)> {
    let socket = TcpSocket::new_v4().context("socket")?;
    socket
        .bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
        .with_context(|| format!("bind {source}"))?;
    let mut stream = socket
        .connect(SocketAddr::V4(SocketAddrV4::new(target.ip, target.port)))
        .await
        .context("connect")?;
    stream.set_nodelay(true).context("nodelay")?;
    if zero_linger {
        stream.set_zero_linger().context("linger")?;
    }
    let request = format!(
        "GET {}/app/{}?protocol=7&client=resound-bench&version={}&flash=false HTTP/1.1\r\n\
         Host: {}:{}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\n\
         Sec-WebSocket-Version: 13\r\n{}\r\n",
        target.prefix,
        target.key,
        env!("CARGO_PKG_VERSION"),
        target.ip,
        target.port,
        fastwebsockets::handshake::generate_key(),
        if deflate {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        },
    );
    stream
        .write_all(request.as_bytes())
        .await
        .context("send upgrade")?;

    let mut buf = BytesMut::with_capacity(1024);
    let head_len = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_HEAD {
            bail!("upgrade response head too large");
        }
        if stream.read_buf(&mut buf).await.context("read upgrade")? == 0 {
            bail!("connection closed during upgrade");
        }
    };
    let head = buf.split_to(head_len);
    let status_line = head[..]
        .split(|&b| b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_string())
        .unwrap_or_default();
    if !status_line.starts_with("HTTP/1.1 101") {
        bail!("upgrade refused: {status_line}");
    }

    let (read, write) = stream.into_split();
    let accepted = deflate
        && String::from_utf8_lossy(&head)
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions: permessage-deflate");
    let (prefix, inflate) = if accepted {
        let z = Inflating {
            raw: buf,
            inflater: Decompress::new(false),
        };
        (BytesMut::new(), Some(Box::new(z)))
    } else {
        (buf, None)
    };
    let (mut reader, mut writer) = fastwebsockets::after_handshake_split(
        Prefixed {
            prefix,
            inner: read,
            inflate,
        },
        write,
        Role::Client,
    );
    // Pings and closes are answered by the caller, which owns the write half.
    reader.set_auto_pong(false);
    reader.set_auto_close(false);
    writer.set_writev(false);
    Ok((FragmentCollectorRead::new(reader), writer))
}

/// A received message, reduced to what the caller needs.
pub enum Incoming {
    Text(Vec<u8>),
    Ping(Vec<u8>),
    Close,
    Ignored,
}

/// Reads the next message. With auto-pong and auto-close off there is never an obligated
/// write, so the send callback does nothing.
///
/// Not cancel safe: dropping the future mid-frame loses the frame (callers only cancel it when
/// they are about to drop the connection).
pub async fn next(reader: &mut Reader) -> Result<Incoming, WebSocketError> {
    let frame = reader
        .read_frame(&mut |_: Frame<'_>| std::future::ready(Ok::<(), WebSocketError>(())))
        .await?;
    Ok(match frame.opcode {
        OpCode::Text | OpCode::Binary => Incoming::Text(Vec::from(frame.payload)),
        OpCode::Ping => Incoming::Ping(Vec::from(frame.payload)),
        OpCode::Close => Incoming::Close,
        _ => Incoming::Ignored,
    })
}

/// Sends one text message.
pub async fn send_text(writer: &mut Writer, text: String) -> Result<(), WebSocketError> {
    writer
        .write_frame(Frame::text(Payload::Owned(text.into_bytes())))
        .await
}

pub async fn send_pong(writer: &mut Writer, payload: Vec<u8>) -> Result<(), WebSocketError> {
    writer
        .write_frame(Frame::pong(Payload::Owned(payload)))
        .await
}

pub async fn send_close(writer: &mut Writer) -> Result<(), WebSocketError> {
    writer.write_frame(Frame::close(1000, b"")).await
}

/// Picks the source address for connection `index`, round-robin.
pub fn source_for(sources: &[Ipv4Addr], index: u64) -> Ipv4Addr {
    if sources.is_empty() {
        return Ipv4Addr::LOCALHOST;
    }
    let i = usize::try_from(index % sources.len() as u64).unwrap_or(0);
    sources.get(i).copied().unwrap_or(Ipv4Addr::LOCALHOST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_of_connections_offers_deflate_spread_evenly() {
        let picked: Vec<bool> = (0..6).map(|i| offers_deflate(0.5, i)).collect();
        assert_eq!(picked, [false, true, false, true, false, true]);
        assert!((0..100).all(|i| !offers_deflate(0.0, i)));
        assert!((0..100).all(|i| offers_deflate(1.0, i)));
    }

    #[test]
    fn compressed_frames_are_rewritten_as_the_plain_frames_they_stand_for() {
        let text = "{\"event\":\"x\",\"data\":\"".to_string() + &"abc".repeat(500) + "\"}";
        let mut c = flate2::Compress::new(flate2::Compression::default(), false);
        let mut z = Vec::with_capacity(4096);
        c.compress_vec(text.as_bytes(), &mut z, flate2::FlushCompress::Sync)
            .unwrap();
        z.truncate(z.len() - 4);
        let mut raw = BytesMut::new();
        raw.extend_from_slice(&[0xC1, z.len() as u8]);
        raw.extend_from_slice(&z);
        raw.extend_from_slice(&[0x81, 2, b'{', b'}']);
        let mut inflating = Inflating {
            raw: raw.split_to(raw.len() - 1),
            inflater: Decompress::new(false),
        };
        let mut out = BytesMut::new();
        assert!(inflating.next_frame(&mut out).unwrap());
        assert_eq!(&out[..4], &[0x81, 126, 0x05, 0xF3]);
        assert_eq!(&out[4..], text.as_bytes());
        assert!(!inflating.next_frame(&mut out).unwrap(), "incomplete");
        inflating.raw.extend_from_slice(b"}");
        out.clear();
        assert!(inflating.next_frame(&mut out).unwrap());
        assert_eq!(&out[..], &[0x81, 2, b'{', b'}']);
    }
}
