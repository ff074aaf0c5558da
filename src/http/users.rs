//! `POST /apps/{id}/users/{user_id}/terminate_connections` (protocol.md 5.6.6).

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use serde_json::json;

use super::{ok_json, ApiError, ApiRequest};
use crate::state::ServerState;

/// Closes every connection signed in as `user_id` with 4009 (and, with
/// `terminate_presence_members`, every connection present as that user), on every node.
/// Always `{}`.
pub(super) fn terminate(
    state: &ServerState,
    r: &ApiRequest,
    user_id: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if user_id.is_empty() {
        return Err(ApiError::BadRequest("user id is empty".into()));
    }
    let presence = r.app.settings.terminate_presence_members;
    r.hub.terminate_user(user_id, presence);
    state.adapter.terminate(&r.app.id, user_id, presence);
    Ok(ok_json(&json!({})))
}
