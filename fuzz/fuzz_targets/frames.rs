//! The client frame reader (`connection/frames.rs`) on arbitrary bytes, handed over in chunks of
//! a size the input chooses, under a partial-message budget the input chooses. Invariants: no
//! panic; every frame read agrees with an independent decoding of the bytes it consumed (header,
//! length, unmasking); no payload over the limit; what the reader allocates is what it charges to
//! the budget, and that is never more than twice the bytes that actually arrived plus the first
//! 4 KiB chunk (a header alone buys no memory); the budget is never overdrawn, refuses only a
//! frame that would overdraw it, and is whole again once the connection's hold is dropped.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use resound::fuzzing::{
    partial_budget, read_frame, FrameError, OpCode, PartialHold, FREE_PARTIAL_BYTES,
};
use tokio::io::{AsyncRead, ReadBuf};

/// Counts live heap bytes and their peak, so the target can see what a read allocates.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
            grew(new);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Hands out the input `chunk` bytes at a time, as a socket would; never pends.
struct Chunked<'a> {
    data: &'a [u8],
    pos: usize,
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self
            .chunk
            .min(buf.remaining())
            .min(self.data.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// The payload length a frame header at the start of `b` states, if all of it is there.
fn stated_len(b: &[u8]) -> Option<u64> {
    Some(match b.get(1)? & 0x7F {
        126 => u64::from(u16::from_be_bytes(b.get(2..4)?.try_into().ok()?)),
        127 => u64::from_be_bytes(b.get(2..10)?.try_into().ok()?),
        n => u64::from(n),
    })
}

/// An independent decoding of one masked client frame: (fin, opcode, payload).
fn reference(b: &[u8]) -> Option<(bool, u8, Vec<u8>)> {
    let b0 = *b.first()?;
    let len = usize::try_from(stated_len(b)?).ok()?;
    let at = match b[1] & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let mask: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    let at = at + 4;
    let payload = b.get(at..at.checked_add(len)?)?;
    if at + len != b.len() {
        return None;
    }
    let unmasked = payload
        .iter()
        .enumerate()
        .map(|(i, x)| x ^ mask[i & 3])
        .collect();
    Some((b0 & 0x80 != 0, b0 & 0x0F, unmasked))
}

fn opcode_bits(op: OpCode) -> u8 {
    match op {
        OpCode::Continuation => 0x0,
        OpCode::Text => 0x1,
        OpCode::Binary => 0x2,
        OpCode::Close => 0x8,
        OpCode::Ping => 0x9,
        OpCode::Pong => 0xA,
    }
}

/// Allocation that is not the payload buffer: `Bytes`' shared header when a buffer is handed on.
const OVERHEAD: usize = 256;

fuzz_target!(|data: &[u8]| {
    // Byte 0: the chunk size; bytes 1..4: the message limit (up to 1 MiB); byte 4: the node's
    // partial budget in KiB (255: unbounded); then the stream.
    if data.len() < 5 {
        return;
    }
    let chunk = usize::from(data[0]) + 1;
    let max = (usize::from(data[1]) << 16 | usize::from(data[2]) << 8 | usize::from(data[3]))
        % ((1 << 20) + 1);
    let limit = match data[4] {
        255 => usize::MAX,
        k => usize::from(k) * 1024,
    };
    let stream = &data[5..];
    let budget = partial_budget(limit).expect("metric names are valid");
    let mut hold = PartialHold::new(budget.clone());
    let mut reader = Chunked {
        data: stream,
        pos: 0,
        chunk,
    };
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    for _ in 0..64 {
        let start = reader.pos;
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let result = {
            let mut fut = pin!(read_frame(&mut reader, max, false, &mut hold));
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(r) => r,
                Poll::Pending => panic!("a reader that never pends left read_frame pending"),
            }
        };
        let arrived = reader.pos - start;
        let allocated = PEAK.load(Ordering::Relaxed).saturating_sub(before);
        let charged = budget.held();
        assert!(
            allocated <= charged + OVERHEAD,
            "read_frame allocated {allocated} bytes but charged {charged}"
        );
        assert!(
            charged <= 2 * arrived + 4096,
            "read_frame holds {charged} bytes after {arrived} bytes arrived (limit {max})"
        );
        assert!(budget.charged() <= limit, "budget overdrawn");
        assert_eq!(
            budget.charged(),
            charged.saturating_sub(FREE_PARTIAL_BYTES),
            "one connection is charged what it holds beyond its allowance"
        );
        match result {
            Ok(frame) => {
                assert!(frame.payload.len() <= max, "payload over the limit");
                let (fin, op, payload) = reference(&stream[start..reader.pos])
                    .expect("the bytes consumed are exactly one frame");
                assert_eq!(frame.fin, fin);
                assert_eq!(opcode_bits(frame.opcode), op);
                assert_eq!(&frame.payload[..], &payload[..], "unmasking");
                if frame.opcode.is_control() {
                    assert!(
                        frame.fin && frame.payload.len() <= 125,
                        "control frame rules"
                    );
                }
                // As the connection does once a message is handled.
                drop(frame);
                hold.lower_to(0);
            }
            Err(FrameError::TooBig(n)) => {
                assert!(n > max as u64, "TooBig({n}) under the limit {max}");
                break;
            }
            Err(FrameError::OverBudget) => {
                let len = stated_len(&stream[start..]).expect("a refused frame had a header");
                assert!(
                    len > (FREE_PARTIAL_BYTES.saturating_add(limit)) as u64,
                    "a {len}-byte frame refused under a budget of {limit}"
                );
                break;
            }
            Err(_) => break,
        }
    }
    drop(hold);
    assert_eq!(
        budget.held(),
        0,
        "bytes still held after the connection ended"
    );
    assert_eq!(budget.charged(), 0, "budget not given back");
});
