//! Connection-level resource bounds against hostile clients: partial messages held by the
//! reader, outbound bytes queued for clients that do not read, and liveness that a client
//! cannot fake.

use std::time::Duration;

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn unsolicited_pong_frames_do_not_keep_a_silent_client_alive() {
    let s = TestServer::start(&config("activity_timeout = 1\npong_timeout = 1", "")).await;
    let mut c = s.client().await;
    // Pong frames every 200 ms for 3.5 s, reading nothing: well past ping + pong timeout.
    for _ in 0..17 {
        if c.ws.send(Message::Pong(Vec::new().into())).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Read through the server's metrics: once closed, our pongs may have been answered by a
    // reset that discards what the socket received.
    let closed = sample(
        &s,
        &format!("resound_new_disconnections_total{{app_id=\"{APP_ID}\",code=\"4201\"}}"),
    )
    .await;
    assert_eq!(closed, 1.0, "closed with 4201 despite its pongs");
}
