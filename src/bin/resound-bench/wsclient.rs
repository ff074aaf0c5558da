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
/// send its first WebSocket frame in the same segment as the `101`).
pub struct Prefixed<R> {
    prefix: BytesMut,
    inner: R,
}

impl<R: AsyncRead + Unpin> AsyncRead for Prefixed<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

pub type Reader = FragmentCollectorRead<Prefixed<OwnedReadHalf>>;
pub type Writer = WebSocketWrite<OwnedWriteHalf>;

/// Opens a WebSocket to `/app/{key}` on the target from `source` (port chosen by the kernel).
pub async fn connect(
    target: &TargetSpec,
    source: Ipv4Addr,
    zero_linger: bool,
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
         Sec-WebSocket-Version: 13\r\n\r\n",
        target.prefix,
        target.key,
        env!("CARGO_PKG_VERSION"),
        target.ip,
        target.port,
        fastwebsockets::handshake::generate_key(),
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
    let (mut reader, mut writer) = fastwebsockets::after_handshake_split(
        Prefixed {
            prefix: buf,
            inner: read,
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
