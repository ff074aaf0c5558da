//! The `permessage-deflate` WebSocket extension (RFC 7692), in the one shape Resound speaks:
//! no context takeover in either direction. Every message is compressed and inflated on its
//! own, so no connection keeps a compression window, and a broadcast compressed once is valid
//! for every subscriber that negotiated the extension.
//!
//! Owned here: the offer parser and the answer ([`negotiate`]), the compressor ([`deflate`]),
//! the bounded inflater of client messages ([`inflate`]), and [`SharedFrame`], a broadcast
//! frame with its compressed form made at most once, on the first subscriber that wants it.
//! Not owned: setting and reading RSV1 (`frames.rs`, `writer.rs`), which connections
//! negotiated (`ConnHandle`), the threshold per app (`AppSettings::deflate_threshold`).
//!
//! The compressor and inflater states (zlib-rs: a few hundred KiB and about 40 KiB) are kept one per
//! worker thread and reset before each message: with no context takeover they carry nothing
//! from one message to the next, and an idle connection owns none.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use prometheus::{Histogram, IntCounter};

use super::frames::{FrameError, PartialHold};

/// The extension's token.
const NAME: &str = "permessage-deflate";
/// The tail a sync flush ends with, removed from every compressed message (RFC 7692 7.2.1)
/// and put back before inflating one (7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// The answer to an offer: neither side keeps its window between messages.
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// The answer to an offer that names `server_max_window_bits=15` (the value must be echoed).
const ANSWER_15: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15";

/// The parameters of one `permessage-deflate` offer that matter to the answer.
#[derive(Debug, Default, PartialEq, Eq)]
struct Offer {
    /// `server_max_window_bits`, when the client limits the server's window.
    server_max_window_bits: Option<u8>,
}

/// Parses one offer's parameters (the part after the extension name). `None`: the offer is
/// malformed and must be declined (RFC 7692 7.1: unknown parameter, parameter given twice,
/// value missing, extra or out of range).
fn parse_offer<'a>(params: impl Iterator<Item = &'a str>) -> Option<Offer> {
    let mut offer = Offer::default();
    let mut seen = [false; 4];
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param.trim(), None),
        };
        let (index, ok) = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => (0, value.is_none()),
            "client_no_context_takeover" => (1, value.is_none()),
            "server_max_window_bits" => {
                let bits = value.and_then(window_bits);
                offer.server_max_window_bits = bits;
                (2, bits.is_some())
            }
            // The client announces it can take a limit on its window; it may carry its own.
            "client_max_window_bits" => (3, value.is_none_or(|v| window_bits(v).is_some())),
            _ => return None,
        };
        if !ok || std::mem::replace(&mut seen[index], true) {
            return None;
        }
    }
    Some(offer)
}

/// A window size parameter's value: 8 to 15, digits only.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// A token or quoted-string value without its quotes (RFC 7692 7.1: the unquoted value must
/// be a token too, which the callers check).
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(v),
    }
}

/// The `Sec-WebSocket-Extensions` answer to the values of the client's headers of that name,
/// or `None` when no `permessage-deflate` offer is acceptable (the connection then goes on
/// uncompressed, as for a client that offers nothing).
///
/// Offers are taken in the client's order of preference; the first acceptable one wins.
/// Always answered with `client_no_context_takeover`, which RFC 7692 7.1.1.2 lets a server
/// add to any offer: the server then never needs an inflate window per connection (32 KiB
/// each, the size of an idle connection several times over), and a client that ignored it
/// would send a message referring to an earlier one, which fails to inflate and closes 1002.
/// An offer that limits the server's window below 15 bits is declined and the next offer
/// tried: a broadcast is compressed once for every socket, with one window size, 32 KiB
/// (no browser limits it).
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    for offer in headers.into_iter().flat_map(|h| h.split(',')) {
        let mut parts = offer.split(';');
        let name = parts.next().map(str::trim).unwrap_or_default();
        if !name.eq_ignore_ascii_case(NAME) {
            continue;
        }
        match parse_offer(parts) {
            Some(Offer {
                server_max_window_bits: None,
            }) => return Some(ANSWER),
            Some(Offer {
                server_max_window_bits: Some(15),
            }) => return Some(ANSWER_15),
            _ => {}
        }
    }
    None
}

thread_local! {
    /// This thread's compressor, reset before each message. The default level (6): a broadcast
    /// is compressed once whatever its fan-out, so the bytes every socket carries matter more
    /// than the tens of microseconds it costs (`BENCHMARKS.md`).
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::default(), false));
    /// This thread's inflater, reset before each message.
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// The payload of a compressed message carrying `plain` (raw deflate, sync-flushed, its
/// empty-block tail removed), independent of any message before it; `None` if the compressor
/// fails (it does not on memory input; the frame then goes uncompressed).
pub fn deflate(plain: &[u8]) -> Option<Bytes> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        c.reset();
        // JSON shrinks; a little room for a payload that does not.
        let mut out = Vec::with_capacity(plain.len() / 2 + 64);
        loop {
            let consumed = usize::try_from(c.total_in()).unwrap_or(plain.len());
            let rest = plain.get(consumed..).unwrap_or_default();
            c.compress_vec(rest, &mut out, FlushCompress::Sync).ok()?;
            // The flush is complete once everything is in and there was room to spare.
            if usize::try_from(c.total_in()).ok() == Some(plain.len()) && out.len() < out.capacity()
            {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        Some(Bytes::from(out))
    })
}

/// The message a client sent compressed (`payload`, every fragment joined), inflated into at
/// most `max` bytes. The output buffer grows with what inflates, each step charged to `hold`
/// before it is allocated, so a deflate bomb costs at most `max` bytes before it is refused
/// with [`FrameError::TooBig`] (close 1009). Data that does not inflate is
/// [`FrameError::Protocol`] (close 1002).
pub fn inflate(payload: &[u8], max: usize, hold: &mut PartialHold) -> Result<Bytes, FrameError> {
    INFLATER.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        let mut out: Vec<u8> = Vec::new();
        // One more byte than allowed: producing it proves the message is too big.
        let limit = max.saturating_add(1);
        for input in [payload, &TAIL[..]] {
            let start = d.total_in();
            loop {
                let consumed = usize::try_from(d.total_in() - start).unwrap_or(input.len());
                let rest = input.get(consumed..).unwrap_or_default();
                if out.len() == out.capacity() {
                    if out.len() >= limit {
                        return Err(FrameError::TooBig(out.len() as u64));
                    }
                    let more = out
                        .capacity()
                        .clamp(4096, 1024 * 1024)
                        .min(limit - out.len());
                    hold.grow(more)?;
                    out.reserve_exact(more);
                }
                let (in_before, out_before) = (d.total_in(), out.len());
                let status = d
                    .decompress_vec(rest, &mut out, FlushDecompress::Sync)
                    .map_err(|_| FrameError::Protocol("compressed message does not inflate"))?;
                if out.len() > max {
                    return Err(FrameError::TooBig(out.len() as u64));
                }
                let done = usize::try_from(d.total_in() - start).ok() == Some(input.len());
                if status == Status::StreamEnd || (done && out.len() < out.capacity()) {
                    break;
                }
                if d.total_in() == in_before
                    && out.len() == out_before
                    && out.len() < out.capacity()
                {
                    return Err(FrameError::Protocol("compressed message does not inflate"));
                }
            }
        }
        Ok(Bytes::from(out))
    })
}

/// The node's compression counters (`resound_compression_*`).
#[derive(Clone)]
pub struct CompressionMetrics {
    /// Bytes of frames compressed, before.
    pub input_bytes: IntCounter,
    /// The same frames' bytes after compression.
    pub output_bytes: IntCounter,
    /// Frames compressed (once each, however many sockets they reach).
    pub frames: IntCounter,
    /// Time spent compressing one frame.
    pub seconds: Histogram,
}

/// How an app's broadcasts are compressed: frames of `threshold` bytes or more, for the
/// sockets that negotiated `permessage-deflate`.
#[derive(Clone)]
pub struct DeflatePolicy {
    pub threshold: usize,
    pub metrics: CompressionMetrics,
}

/// A broadcast frame and, made at most once and only when first asked for, its compressed
/// form: the bytes every deflate subscriber of the node shares. Lives for one delivery.
pub struct SharedFrame<'a> {
    plain: &'a Bytes,
    policy: Option<&'a DeflatePolicy>,
    deflated: OnceLock<Option<Bytes>>,
}

impl<'a> SharedFrame<'a> {
    /// `plain`, compressed under `policy` (none: never compressed).
    pub fn new(plain: &'a Bytes, policy: Option<&'a DeflatePolicy>) -> SharedFrame<'a> {
        SharedFrame {
            plain,
            policy,
            deflated: OnceLock::new(),
        }
    }

    /// The frame as encoded.
    pub fn plain(&self) -> &Bytes {
        self.plain
    }

    /// The compressed payload, compressed now if nobody asked before; `None` for a frame
    /// under the threshold, without a policy, or that compression would not shrink.
    pub fn deflated(&self) -> Option<&Bytes> {
        let policy = self.policy?;
        if self.plain.len() < policy.threshold {
            return None;
        }
        self.deflated
            .get_or_init(|| {
                let started = Instant::now();
                let z = deflate(self.plain)?;
                let m = &policy.metrics;
                m.seconds.observe(started.elapsed().as_secs_f64());
                m.frames.inc();
                m.input_bytes.inc_by(self.plain.len() as u64);
                m.output_bytes.inc_by(z.len() as u64);
                (z.len() < self.plain.len()).then_some(z)
            })
            .as_ref()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::connection::frames::PartialBudget;

    fn new_hold() -> (Arc<PartialBudget>, PartialHold) {
        let gauge = prometheus::IntGauge::new("held", "held").unwrap();
        let refused = IntCounter::new("refused", "refused").unwrap();
        let budget = PartialBudget::new(usize::MAX, gauge, refused);
        (budget.clone(), PartialHold::new(budget))
    }

    fn policy(threshold: usize) -> DeflatePolicy {
        DeflatePolicy {
            threshold,
            metrics: CompressionMetrics {
                input_bytes: IntCounter::new("in", "in").unwrap(),
                output_bytes: IntCounter::new("out", "out").unwrap(),
                frames: IntCounter::new("frames", "frames").unwrap(),
                seconds: Histogram::with_opts(prometheus::HistogramOpts::new("s", "s")).unwrap(),
            },
        }
    }

    fn json(len: usize) -> Vec<u8> {
        let mut s = String::from("{\"event\":\"update\",\"data\":\"[");
        let mut i = 0;
        while s.len() < len - 3 {
            s.push_str(&format!(
                "{{\\\"id\\\":{i},\\\"price\\\":{}}},",
                i * 7 % 1000
            ));
            i += 1;
        }
        s.truncate(len - 3);
        s.push_str("]\"}");
        s.into_bytes()
    }

    #[test]
    fn offers_as_browsers_and_node_ws_send_them_are_accepted() {
        // Chromium, Firefox and Safari; Node's ws; an offer split across two header lines.
        for headers in [
            vec!["permessage-deflate; client_max_window_bits"],
            vec!["permessage-deflate"],
            vec!["PerMessage-Deflate ;  client_max_window_bits = 15"],
            vec!["x-webkit-deflate-frame", "permessage-deflate"],
            vec!["permessage-deflate; server_no_context_takeover; client_no_context_takeover"],
            vec!["permessage-deflate; client_max_window_bits=\"10\""],
        ] {
            assert_eq!(negotiate(headers.clone()), Some(ANSWER), "{headers:?}");
        }
        assert_eq!(
            negotiate(["permessage-deflate; server_max_window_bits=15"]),
            Some(ANSWER_15),
            "the window limit the client named is echoed"
        );
    }

    #[test]
    fn malformed_or_unsatisfiable_offers_are_declined_and_the_next_one_tried() {
        for offer in [
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=015",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
            "permessage-deflate; client_max_window_bits=\"10",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(negotiate([offer]), None, "{offer:?}");
        }
        assert_eq!(
            negotiate(["permessage-deflate; server_max_window_bits=9, permessage-deflate"]),
            Some(ANSWER),
            "a fallback offer after an unsatisfiable one"
        );
        assert_eq!(negotiate(Vec::<&str>::new()), None);
    }

    #[test]
    fn a_compressed_message_inflates_to_the_original_without_the_tail() {
        for len in [1usize, 200, 4096, 100_000] {
            let plain = json(len.max(10));
            let z = deflate(&plain).unwrap();
            assert!(!z.ends_with(&TAIL), "the tail is removed");
            if len >= 4096 {
                assert!(z.len() * 3 < plain.len(), "{len}: {} bytes", z.len());
            }
            let (_, mut hold) = new_hold();
            let back = inflate(&z, plain.len(), &mut hold).unwrap();
            assert_eq!(&back[..], &plain[..]);
        }
    }

    #[test]
    fn each_message_stands_alone() {
        let plain = json(2000);
        assert_eq!(deflate(&plain), deflate(&plain), "no context carried over");
    }

    #[test]
    fn a_deflate_bomb_is_refused_at_the_limit_having_held_no_more() {
        // 10 MB of zeros compress to about 10 KB.
        let z = deflate(&vec![0u8; 10_000_000]).unwrap();
        assert!(z.len() < 20_000);
        let (budget, mut hold) = new_hold();
        let r = inflate(&z, 65_536, &mut hold);
        assert!(
            matches!(r, Err(FrameError::TooBig(n)) if n > 65_536),
            "{r:?}"
        );
        assert!(
            budget.held() <= 65_537,
            "held {} bytes for a 64 KiB limit",
            budget.held()
        );
        // Exactly at the limit is fine.
        let z = deflate(&vec![b'a'; 65_536]).unwrap();
        let (_, mut hold) = new_hold();
        assert_eq!(inflate(&z, 65_536, &mut hold).unwrap().len(), 65_536);
    }

    #[test]
    fn data_that_does_not_inflate_is_a_protocol_error() {
        let (_, mut hold) = new_hold();
        for bad in [&[0xffu8, 0xff, 0xff][..], &[0x07, 0x00][..]] {
            assert!(
                matches!(inflate(bad, 1000, &mut hold), Err(FrameError::Protocol(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_shared_frame_is_compressed_once_and_only_above_the_threshold() {
        let p = policy(512);
        let big = Bytes::from(json(4096));
        let frame = SharedFrame::new(&big, Some(&p));
        let first = frame.deflated().cloned().unwrap();
        let second = frame.deflated().cloned().unwrap();
        assert_eq!(first.as_ptr(), second.as_ptr(), "the same bytes, shared");
        assert_eq!(p.metrics.frames.get(), 1);
        assert_eq!(p.metrics.input_bytes.get(), 4096);
        assert_eq!(p.metrics.output_bytes.get(), first.len() as u64);

        let small = Bytes::from(json(511));
        assert!(SharedFrame::new(&small, Some(&p)).deflated().is_none());
        assert!(SharedFrame::new(&big, None).deflated().is_none());
        // Random bytes do not shrink: sent as they are.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let noise = Bytes::from(noise);
        assert!(SharedFrame::new(&noise, Some(&p)).deflated().is_none());
        assert_eq!(p.metrics.frames.get(), 2, "no frame is compressed twice");
    }
}
