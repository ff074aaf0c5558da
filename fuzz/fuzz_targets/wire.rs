//! The cluster wire decoder (`cluster/wire.rs`) on arbitrary messages, as another node (or
//! anything that can publish on the backend) could send them. Invariants: no panic; a decoded
//! message re-encodes to bytes that decode to the same message, and re-encoding that is a fixed
//! point (byte for byte); an event's frame is carried as a slice of what arrived, never grown.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use resound::cluster::wire::{decode, encode_event, encode_terminate, Received, WireMessage};

fn encode(r: &Received) -> Bytes {
    match &r.message {
        WireMessage::Event(e) => encode_event(r.origin, e, r.sent_at),
        WireMessage::Terminate {
            app,
            user,
            presence,
        } => encode_terminate(r.origin, app, user, *presence, r.sent_at),
    }
}

fuzz_target!(|data: &[u8]| {
    let msg = Bytes::copy_from_slice(data);
    let Ok(r) = decode(&msg) else {
        return;
    };
    if let WireMessage::Event(e) = &r.message {
        assert!(e.frame.len() <= data.len(), "frame longer than the message");
        assert!(data.ends_with(&e.frame), "frame is not the message's tail");
    }
    let once = encode(&r);
    assert_eq!(
        decode(&once).as_ref(),
        Ok(&r),
        "re-encoded message reads differently"
    );
    assert_eq!(encode(&r), once, "encoding is not deterministic");
});
