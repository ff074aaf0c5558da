//! `POST /apps/{id}/users/{user_id}/terminate_connections` (spec 5.6.6).

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use serde_json::json;

use super::{ok_json, ApiError, ApiRequest};
use crate::protocol::ErrorKind;

/// Closes every connection signed in as `user_id` with 4009 (and, with
/// `terminate_presence_members`, every connection present as that user). Always `{}`.
pub(super) fn terminate(r: &ApiRequest, user_id: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    if user_id.is_empty() {
        return Err(ApiError::BadRequest("user id is empty".into()));
    }
    r.hub.users.terminate(user_id);
    if r.app.settings.terminate_presence_members {
        for c in r.hub.connections.iter() {
            if c.value().is_present_as(user_id) {
                c.value().close(ErrorKind::Terminated);
            }
        }
    }
    Ok(ok_json(&json!({})))
}
