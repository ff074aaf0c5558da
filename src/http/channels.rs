//! Channel queries (protocol.md 5.6.3–5.6.5) and Reverb's `GET /apps/{id}/connections`.

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use serde_json::{json, Map, Value};
use tracing::warn;

use super::{ok_json, ApiError, ApiRequest};
use crate::protocol::ChannelName;
use crate::state::ServerState;

/// A backend error while answering `query`: logged here, answered with the fixed 503.
fn unavailable<E: std::fmt::Display>(query: &'static str) -> impl FnOnce(E) -> ApiError {
    move |e| {
        warn!(query, error = %e, "cluster backend unavailable; answering 503");
        ApiError::Unavailable
    }
}

fn attributes(r: &ApiRequest) -> Vec<String> {
    r.query
        .get("info")
        .map(|i| {
            i.split(',')
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// `GET /apps/{id}/channels`: occupied channels, `{}` when none.
pub(super) async fn list(
    state: &ServerState,
    r: &ApiRequest,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let prefix = r.query.get("filter_by_prefix").unwrap_or("");
    let info = attributes(r);
    let want_users = info.iter().any(|a| a == "user_count");
    let want_subs = info.iter().any(|a| a == "subscription_count");
    if want_users && !prefix.starts_with("presence-") {
        return Err(ApiError::BadRequest(
            "info=user_count requires filter_by_prefix to start with presence-".into(),
        ));
    }
    let page = Page::of(r)?;
    let mut occupied = state
        .cluster
        .occupied(&r.hub, prefix)
        .await
        .map_err(unavailable("occupied channels"))?;
    occupied.sort_unstable();
    let (occupied, next) = page.cut(occupied);
    let mut channels = Map::new();
    for (name, count) in occupied {
        let mut attrs = Map::new();
        if want_users && name.starts_with("presence-") {
            let n = state
                .presence
                .members(&r.app.id, &name)
                .await
                .map_or(0, |m| m.len());
            attrs.insert("user_count".into(), json!(n));
        }
        if want_subs {
            attrs.insert("subscription_count".into(), json!(count));
        }
        channels.insert(name, Value::Object(attrs));
    }
    let mut body = Map::new();
    body.insert("channels".into(), Value::Object(channels));
    if let Some(next) = next {
        body.insert("next".into(), Value::String(next));
    }
    Ok(ok_json(&Value::Object(body)))
}

/// One page of `GET /channels` (a Resound extension, protocol.md 5.6.3): at most `limit` channels
/// (the app's `max_channels_listed` by default and at most), in name order, after the
/// channel named by `after`. A clipped answer carries `next`, the `after` of the next page;
/// SDKs that know nothing of it read the first page as the whole answer.
struct Page<'a> {
    after: Option<&'a str>,
    limit: usize,
}

impl<'a> Page<'a> {
    fn of(r: &'a ApiRequest) -> Result<Page<'a>, ApiError> {
        let max = r.app.settings.max_channels_listed;
        let limit = match r.query.get("limit") {
            None => max,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => n,
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "limit must be an integer from 1 to {max}"
                    )))
                }
            },
        };
        Ok(Page {
            after: r.query.get("after").filter(|a| !a.is_empty()),
            limit,
        })
    }

    /// This page of `sorted` (sorted by name), and the cursor of the next one when more follow.
    fn cut<T>(&self, mut sorted: Vec<(String, T)>) -> (Vec<(String, T)>, Option<String>) {
        if let Some(after) = self.after {
            let first = sorted.partition_point(|(name, _)| name.as_str() <= after);
            sorted.drain(..first);
        }
        if sorted.len() <= self.limit {
            return (sorted, None);
        }
        sorted.truncate(self.limit);
        let next = sorted.last().map(|(name, _)| name.clone());
        (sorted, next)
    }
}

fn parse_name(r: &ApiRequest, name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name, r.app.settings.max_channel_name_length)
        .map_err(|e| ApiError::BadRequest(format!("Invalid channel name {name:?}: {e}")))
}

/// `GET /apps/{id}/channels/{name}`: `occupied` always, plus the requested attributes.
pub(super) async fn show(
    state: &ServerState,
    r: &ApiRequest,
    name: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let channel = parse_name(r, name)?;
    let info = attributes(r);
    if info.iter().any(|a| a == "user_count") && !channel.kind().is_presence() {
        return Err(ApiError::BadRequest(
            "user_count is only available for presence channels".into(),
        ));
    }
    let count = state
        .cluster
        .subscription_count(&r.hub, channel.as_str())
        .await
        .map_err(unavailable("subscription count"))?;
    let mut out = Map::new();
    out.insert("occupied".into(), json!(count > 0));
    for a in &info {
        match a.as_str() {
            "user_count" => {
                let n = state
                    .presence
                    .members(&r.app.id, channel.as_str())
                    .await
                    .map_or(0, |m| m.len());
                out.insert("user_count".into(), json!(n));
            }
            "subscription_count" => {
                out.insert("subscription_count".into(), json!(count));
            }
            "cache" => {
                let cached = state
                    .cluster
                    .cached(&r.hub, channel.as_str())
                    .await
                    .map_err(unavailable("cached event"))?
                    .map(|c| {
                        let ttl = c
                            .expires
                            .saturating_duration_since(std::time::Instant::now());
                        json!({"data": &*c.data, "ttl": ttl.as_secs()})
                    });
                out.insert("cache".into(), cached.unwrap_or(Value::Null));
            }
            _ => {}
        }
    }
    Ok(ok_json(&Value::Object(out)))
}

/// `GET /apps/{id}/channels/{name}/users`: presence members, one per distinct user.
pub(super) async fn users(
    state: &ServerState,
    r: &ApiRequest,
    name: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let channel = parse_name(r, name)?;
    if !channel.kind().is_presence() {
        return Err(ApiError::BadRequest(
            "Users are only available for presence channels".into(),
        ));
    }
    let members = state
        .presence
        .members(&r.app.id, channel.as_str())
        .await
        .map_err(unavailable("presence members"))?;
    let users: Vec<Value> = members
        .iter()
        .map(|m| json!({"id": m.user_id.as_str()}))
        .collect();
    Ok(ok_json(&json!({ "users": users })))
}

/// `GET /apps/{id}/connections` (Reverb): open connections of the app, cluster-wide.
pub(super) async fn connections(
    state: &ServerState,
    r: &ApiRequest,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let n = state
        .cluster
        .connections(&r.hub)
        .await
        .map_err(unavailable("connection count"))?;
    Ok(ok_json(&json!({ "connections": n })))
}

#[cfg(test)]
mod tests {
    use super::Page;

    fn names(n: usize) -> Vec<(String, u64)> {
        (0..n).map(|i| (format!("ch-{i:03}"), 1)).collect()
    }

    fn listed(page: &(Vec<(String, u64)>, Option<String>)) -> Vec<&str> {
        page.0.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn pages_walk_every_channel_once_in_order() {
        let all = names(7);
        let mut after: Option<String> = None;
        let mut seen = Vec::new();
        loop {
            let page = Page {
                after: after.as_deref(),
                limit: 3,
            }
            .cut(all.clone());
            seen.extend(listed(&page).into_iter().map(String::from));
            match page.1 {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let expected: Vec<String> = all.into_iter().map(|(n, _)| n).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_page_that_holds_the_rest_has_no_next() {
        let page = Page {
            after: Some("ch-003"),
            limit: 3,
        }
        .cut(names(7));
        assert_eq!(listed(&page), ["ch-004", "ch-005", "ch-006"]);
        assert_eq!(page.1, None);
        let gone = Page {
            after: Some("ch-002x"),
            limit: 10,
        }
        .cut(names(7));
        assert_eq!(
            listed(&gone)[0],
            "ch-003",
            "a cursor need not be a channel still occupied"
        );
    }
}
