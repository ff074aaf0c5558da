//! Every Redis key and pub/sub topic the backend uses, in one table: the only place their
//! formats are written. `P` is `[scaling] channel`, so several deployments can share one
//! Redis; on a Redis Cluster, keys start with `{P}` (a hash tag: every key on one slot, so the
//! scripts that touch several keys stay legal) while topics keep the bare `P`, so each topic
//! lands on the shard of its own slot.
//!
//! | name | type | content |
//! |---|---|---|
//! | `P#c#{app}#{channel}` | pub/sub | events for a channel; subscribed by nodes with local subscribers |
//! | `P#u#{app}#{user}` | pub/sub | events for a user's connections (`#server-to-user-`) |
//! | `P#w#{app}#{user}` | pub/sub | watchlist events about a user; subscribed by nodes with watchers |
//! | `P#ctl` | pub/sub | control messages (terminate, interest), subscribed by every node |
//! | `P#n#{id}` | pub/sub | a node's own syncs (`quiet.rs`), subscribed by that node only |
//! | `P:nodes` | zset | node id → lease expiry (ms); refreshed every `HEARTBEAT` |
//! | `P:wire` | hash | node id → newest wire version it reads (absent: 1) |
//! | `P:c` / `P:node:{id}:c` | hash | app → connections (cluster / that node's share) |
//! | `P:s:{app}` / `P:node:{id}:s` | hash | channel (node share: `{app}\n{channel}`) → subscriptions |
//! | `P:u:{app}` / `P:node:{id}:u` | hash | user (node share: `{app}\n{user}`) → signed-in connections |
//! | `P:p:{app}:{channel}:m` | hash | presence user → user_info |
//! | `P:p:{app}:{channel}:n` | hash | presence user → connections cluster-wide |
//! | `P:p:{app}:{channel}:o` | hash | `{node}\|{user}` → that node's connections of the user |
//! | `P:node:{id}:p` | set | `{app}\n{channel}\n{user}` the node holds (to undo when it dies) |
//! | `P:cache:{app}:{channel}` | hash | `frame`, `data` of a cache channel's last event, with a TTL |
//! | `P:hold:v:{app}:{channel}` | string | token of a held `channel_vacated` |
//! | `P:hold:m:{app}:{channel}\n{user}` | string | token of a held `member_removed` |
//! | `P:node:{id}:wh` | stream | the node's webhook journal (`journal.rs`) |
//! | `P:wh` | set | node ids that have a webhook journal |
//! | `P:h:{app}:{channel}` | hash | a channel's shared history: `e` its epoch, `o` the last offset given; expires `history_ttl` after the last event |
//! | `P:h:{app}:{channel}:s` | stream | that history's events (`o` offset, `f` frame without position, `x` socket skipped or `""`), trimmed to `history_max_events` and `history_ttl`; expires with the hash |
//! | `P:idem:{app}:{key}` | string | an HTTP API idempotency key: `p\n{fingerprint}` while handled, `d\n{fingerprint}\n{answer}` after, with a TTL |

use crate::app::AppId;
use crate::cluster::Target;

/// The key and topic formats of one deployment (see the table above).
#[derive(Debug, Clone)]
pub(super) struct Keys {
    /// Prefix of pub/sub topics (`[scaling] channel`).
    topic_prefix: String,
    /// Prefix of keys: the same, in braces on a Redis Cluster.
    key_prefix: String,
}

/// The counts kept per node and in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Tally {
    /// `P:c` app → connections.
    Connections,
    /// `P:s:{app}` channel → subscriptions.
    Subscriptions,
    /// `P:u:{app}` user → signed-in connections.
    Users,
}

/// Where one tally change is written: the cluster-wide hash and field, and the node's share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TallyKeys {
    pub total: String,
    pub field: String,
    pub node: String,
    pub node_field: String,
}

impl Keys {
    pub(super) fn new(topic_prefix: &str, key_prefix: &str) -> Keys {
        Keys {
            topic_prefix: topic_prefix.to_string(),
            key_prefix: key_prefix.to_string(),
        }
    }

    pub(super) fn topic(&self, app: &AppId, target: &Target) -> String {
        match target {
            Target::Channel(c) => format!("{}#c#{}#{}", self.topic_prefix, app, c),
            Target::User(u) => format!("{}#u#{}#{}", self.topic_prefix, app, u),
            Target::Watchers(u) => format!("{}#w#{}#{}", self.topic_prefix, app, u),
        }
    }

    pub(super) fn control_topic(&self) -> String {
        format!("{}#ctl", self.topic_prefix)
    }

    /// `P#n#{id}`: where a node sends its syncs to itself.
    pub(super) fn node_topic(&self, node: u64) -> String {
        format!("{}#n#{}", self.topic_prefix, node)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{}", self.key_prefix, rest)
    }

    /// `P:nodes`: the leases.
    pub(super) fn nodes(&self) -> String {
        self.key("nodes")
    }

    /// `P:wire`: the wire version each node reads.
    pub(super) fn wire(&self) -> String {
        self.key("wire")
    }

    /// `P:node:{id}:{what}`: a node's share of a tally (`c`, `s`, `u`), its presence
    /// entries (`p`) or its webhook journal (`wh`).
    pub(super) fn node(&self, node: u64, what: &str) -> String {
        format!("{}:node:{}:{}", self.key_prefix, node, what)
    }

    /// Every key of a node's shares, deleted once they are undone.
    pub(super) fn node_shares(&self, node: u64) -> [String; 4] {
        ["p", "s", "c", "u"].map(|w| self.node(node, w))
    }

    /// The keys and fields of one tally change for `node` (see `Tally`).
    pub(super) fn tally(&self, what: Tally, node: u64, app: &str, item: &str) -> TallyKeys {
        match what {
            Tally::Connections => TallyKeys {
                total: self.connections(),
                field: app.to_string(),
                node: self.share(what, node),
                node_field: app.to_string(),
            },
            Tally::Subscriptions => TallyKeys {
                total: self.subscriptions(app),
                field: item.to_string(),
                node: self.share(what, node),
                node_field: format!("{app}\n{item}"),
            },
            Tally::Users => TallyKeys {
                total: self.users(app),
                field: item.to_string(),
                node: self.share(what, node),
                node_field: format!("{app}\n{item}"),
            },
        }
    }

    /// The app and item of a field of a node's share hash of `what` (the inverse of
    /// `tally`'s `node_field`); `None` for a field no node writes.
    pub(super) fn share_field(what: Tally, field: &str) -> Option<(&str, &str)> {
        match what {
            Tally::Connections => Some((field, "")),
            Tally::Subscriptions | Tally::Users => field.split_once('\n'),
        }
    }

    /// The node share hash of `what`.
    pub(super) fn share(&self, what: Tally, node: u64) -> String {
        self.node(
            node,
            match what {
                Tally::Connections => "c",
                Tally::Subscriptions => "s",
                Tally::Users => "u",
            },
        )
    }

    /// `P:c`: app → connections.
    pub(super) fn connections(&self) -> String {
        self.key("c")
    }

    /// `P:s:{app}`: channel → subscriptions.
    pub(super) fn subscriptions(&self, app: &str) -> String {
        self.key(&format!("s:{app}"))
    }

    /// `P:u:{app}`: user → signed-in connections.
    pub(super) fn users(&self, app: &str) -> String {
        self.key(&format!("u:{app}"))
    }

    /// `P:cache:{app}:{channel}`.
    pub(super) fn cache(&self, app: &str, channel: &str) -> String {
        self.key(&format!("cache:{app}:{channel}"))
    }

    /// The marker that holds a channel's `channel_vacated` (see `RemovalHold`).
    pub(super) fn vacated_hold(&self, app: &str, channel: &str) -> String {
        format!("{}:hold:v:{}:{}", self.key_prefix, app, channel)
    }

    /// The marker that holds a member's `member_removed` (see `RemovalHold`).
    pub(super) fn member_hold(&self, app: &str, channel: &str, user: &str) -> String {
        format!("{}:hold:m:{}:{}\n{}", self.key_prefix, app, channel, user)
    }

    /// `[m, n, o]`: a presence channel's members, their connection counts, and the counts
    /// per node.
    pub(super) fn presence(&self, app: &str, channel: &str) -> [String; 3] {
        let base = format!("{}:p:{}:{}", self.key_prefix, app, channel);
        [
            format!("{base}:m"),
            format!("{base}:n"),
            format!("{base}:o"),
        ]
    }

    /// The entry of `P:node:{id}:p` for one presence member.
    pub(super) fn presence_entry(app: &str, channel: &str, user: &str) -> String {
        format!("{app}\n{channel}\n{user}")
    }

    /// `P:node:{id}:wh`: a node's webhook journal.
    pub(super) fn journal(&self, node: u64) -> String {
        self.node(node, "wh")
    }

    /// `P:idem:{app}:{key}`: an idempotency key of the HTTP API.
    pub(super) fn idempotency(&self, app: &str, key: &str) -> String {
        self.key(&format!("idem:{app}:{key}"))
    }

    /// `[hash, stream]`: a channel's shared history (`P:h:{app}:{channel}` and its `:s`).
    pub(super) fn history(&self, app: &str, channel: &str) -> [String; 2] {
        let base = self.key(&format!("h:{app}:{channel}"));
        let stream = format!("{base}:s");
        [base, stream]
    }

    /// `P:wh`: the nodes that have a journal.
    pub(super) fn journals(&self) -> String {
        self.key("wh")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The formats are the protocol other nodes (of this and older releases) read: a change
    /// here is a wire change.
    #[test]
    fn formats_match_the_table() {
        let k = Keys::new("P", "{P}");
        let app = AppId("a".into());
        assert_eq!(k.topic(&app, &Target::Channel("ch".into())), "P#c#a#ch");
        assert_eq!(k.topic(&app, &Target::User("u".into())), "P#u#a#u");
        assert_eq!(k.topic(&app, &Target::Watchers("u".into())), "P#w#a#u");
        assert_eq!(k.control_topic(), "P#ctl");
        assert_eq!(k.node_topic(7), "P#n#7");
        assert_eq!(k.nodes(), "{P}:nodes");
        assert_eq!(k.wire(), "{P}:wire");
        assert_eq!(k.connections(), "{P}:c");
        assert_eq!(k.subscriptions("a"), "{P}:s:a");
        assert_eq!(k.users("a"), "{P}:u:a");
        assert_eq!(k.node(7, "p"), "{P}:node:7:p");
        assert_eq!(k.cache("a", "cache-x"), "{P}:cache:a:cache-x");
        assert_eq!(k.vacated_hold("a", "ch"), "{P}:hold:v:a:ch");
        assert_eq!(k.member_hold("a", "ch", "u"), "{P}:hold:m:a:ch\nu");
        assert_eq!(
            k.presence("a", "presence-x"),
            [
                "{P}:p:a:presence-x:m".to_string(),
                "{P}:p:a:presence-x:n".to_string(),
                "{P}:p:a:presence-x:o".to_string()
            ]
        );
        assert_eq!(Keys::presence_entry("a", "ch", "u"), "a\nch\nu");
        assert_eq!(k.journal(7), "{P}:node:7:wh");
        assert_eq!(k.journals(), "{P}:wh");
        assert_eq!(k.idempotency("a", "k-1"), "{P}:idem:a:k-1");
        assert_eq!(
            k.history("a", "chat-1"),
            ["{P}:h:a:chat-1".to_string(), "{P}:h:a:chat-1:s".to_string()]
        );
        assert_eq!(
            k.tally(Tally::Subscriptions, 7, "a", "ch"),
            TallyKeys {
                total: "{P}:s:a".into(),
                field: "ch".into(),
                node: "{P}:node:7:s".into(),
                node_field: "a\nch".into(),
            }
        );
        assert_eq!(
            k.tally(Tally::Connections, 7, "a", ""),
            TallyKeys {
                total: "{P}:c".into(),
                field: "a".into(),
                node: "{P}:node:7:c".into(),
                node_field: "a".into(),
            }
        );
    }
}
