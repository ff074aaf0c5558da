//! The cluster wire decoder (`cluster/wire.rs`) on arbitrary messages, as another node (or
//! anything that can publish on the backend) could send them. Invariants: no panic; a decoded
//! message re-encodes to bytes that decode to the same message, and re-encoding that is a fixed
//! point (byte for byte); an event's frame is carried as a slice of what arrived, never grown.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use resound::cluster::wire::{
    decode, encode_event, encode_interest, encode_sync, encode_terminate, Received, WireMessage,
};

/// `r` written again in wire `version` (the one it arrived in).
fn encode(r: &Received, version: u8) -> Bytes {
    let sent_at = r.sent_at.unwrap_or(0);
    match &r.message {
        WireMessage::Event(e) => encode_event(r.origin, e, version, sent_at),
        WireMessage::Terminate {
            app,
            user,
            presence,
        } => encode_terminate(r.origin, app, user, *presence, version, sent_at),
        // Always version 5 (the only one that has them).
        WireMessage::Interest { topic } => encode_interest(r.origin, topic, sent_at),
        WireMessage::Sync { seq } => encode_sync(r.origin, *seq, sent_at),
    }
}

fuzz_target!(|data: &[u8]| {
    let msg = Bytes::copy_from_slice(data);
    let Ok(r) = decode(&msg) else {
        return;
    };
    // A message that decodes starts with the version byte it was written in.
    let version = data[0];
    if let WireMessage::Event(e) = &r.message {
        let frame = &e.publication.frame;
        assert!(frame.len() <= data.len(), "frame longer than the message");
        assert!(data.ends_with(frame), "frame is not the message's tail");
    }
    let once = encode(&r, version);
    assert_eq!(
        decode(&once).as_ref(),
        Ok(&r),
        "re-encoded message reads differently"
    );
    assert_eq!(encode(&r, version), once, "encoding is not deterministic");
});
