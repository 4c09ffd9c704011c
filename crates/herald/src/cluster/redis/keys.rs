//! Where the Redis store keeps what, and how its scripts' answers read: pure functions, so the
//! layout and the parsing are unit-tested without a Redis.
//!
//! Every key of one channel carries the channel's hash tag `{<app>:<channel>}` (the broker's
//! pub/sub channel for it has the same tag), every key of one user `{<app>:u:<user>}`, every
//! key of one node's bookkeeping `{n:<sid>}`: so each script and pipeline touches one hash slot
//! and runs unchanged on Redis Cluster. A `sid` is one incarnation of a node (`<node id>.<n>`):
//! a node that peers reaped while it was stalled comes back under a new one.
//!
//! | key | type | what |
//! |---|---|---|
//! | `<p>:cs:{a:c}` | hash sid → n | each node's subscribers of channel c |
//! | `<p>:ct:{a:c}` | string | the channel's subscribers, all nodes |
//! | `<p>:pn:{a:c}:<sid>` | hash user → n | one node's connections per presence member |
//! | `<p>:pt:{a:c}` | hash user → n | connections per presence member, all nodes (HLEN = users) |
//! | `<p>:pi:{a:c}` | hash user → info | the members' user_info |
//! | `<p>:dead:{a:c}` | set of sids | reaped nodes whose late writes this channel refuses (expires) |
//! | `<p>:us:{a:u:x}` | hash sid → n | each node's signed-in connections of user x |
//! | `<p>:ut:{a:u:x}` | string | the user's signed-in connections, all nodes |
//! | `<p>:dead:{a:u:x}` | set of sids | as for channels |
//! | `<p>:occ:{a}` | set | app a's occupied channels (a superset: readers skip empty ones) |
//! | `<p>:hb:{n:s}` | string, expires | node s is alive |
//! | `<p>:alive:{n:s}` | string | node s's share is in Redis (gone after a restart or a reap) |
//! | `<p>:gone:{n:s}` | string, expires | peers reaped node s: it must come back under a new sid |
//! | `<p>:reap:{n:s}` | string, expires | the one node reaping s |
//! | `<p>:nc:{n:s}` | set of `app\nchannel` | channels where s has a share |
//! | `<p>:nu:{n:s}` | set of `app\nuser` | users of whom s has a share |
//! | `<p>:nodes` | set of sids | the nodes, for liveness checks |

use herald_core::Transition;
use herald_protocol::{ChannelName, SocketId};
use redis::Value;
use std::sync::Arc;

/// The keys of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ChannelKeys {
    pub shares: String,
    pub total: String,
    pub member_totals: String,
    pub info: String,
    pub fence: String,
    /// `<p>:pn:{a:c}:` — a node's member shares are this followed by its sid.
    members_of: String,
}

impl ChannelKeys {
    pub fn new(p: &str, app: &str, channel: &str) -> Self {
        let tag = format!("{{{app}:{channel}}}");
        Self {
            shares: format!("{p}:cs:{tag}"),
            total: format!("{p}:ct:{tag}"),
            member_totals: format!("{p}:pt:{tag}"),
            info: format!("{p}:pi:{tag}"),
            fence: format!("{p}:dead:{tag}"),
            members_of: format!("{p}:pn:{tag}:"),
        }
    }

    /// One node's connections per presence member of the channel.
    pub fn members(&self, sid: &str) -> String {
        format!("{}{sid}", self.members_of)
    }
}

/// The keys of one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UserKeys {
    pub shares: String,
    pub total: String,
    pub fence: String,
}

impl UserKeys {
    pub fn new(p: &str, app: &str, user: &str) -> Self {
        let tag = format!("{{{app}:u:{user}}}");
        Self {
            shares: format!("{p}:us:{tag}"),
            total: format!("{p}:ut:{tag}"),
            fence: format!("{p}:dead:{tag}"),
        }
    }
}

/// The keys of one node incarnation's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NodeKeys {
    pub heartbeat: String,
    pub alive: String,
    pub gone: String,
    pub claim: String,
    pub channels: String,
    pub users: String,
}

impl NodeKeys {
    pub fn new(p: &str, sid: &str) -> Self {
        let tag = format!("{{n:{sid}}}");
        Self {
            heartbeat: format!("{p}:hb:{tag}"),
            alive: format!("{p}:alive:{tag}"),
            gone: format!("{p}:gone:{tag}"),
            claim: format!("{p}:reap:{tag}"),
            channels: format!("{p}:nc:{tag}"),
            users: format!("{p}:nu:{tag}"),
        }
    }
}

/// An app's occupied channels.
pub(super) fn occupied(p: &str, app: &str) -> String {
    format!("{p}:occ:{{{app}}}")
}

/// Every node incarnation that has not been reaped.
pub(super) fn registry(p: &str) -> String {
    format!("{p}:nodes")
}

/// A node's list entry for a channel or a user: `app\nname`.
pub(super) fn entry(app: &str, name: &str) -> String {
    format!("{app}\n{name}")
}

/// Reads a list entry back. App ids hold no newline; channel names and user ids follow it.
pub(super) fn parse_entry(e: &str) -> Option<(&str, &str)> {
    e.split_once('\n')
        .filter(|(a, n)| !a.is_empty() && !n.is_empty())
}

/// Why a prefix cannot name keys: braces would move the hash tag out of the channel's part.
pub(super) fn check_prefix(p: &str) -> Result<(), String> {
    if p.contains(['{', '}']) {
        return Err(format!(
            "invalid redis.prefix `{p}`: it must not contain `{{` or `}}` (Redis Cluster reads braces as a hash tag)"
        ));
    }
    Ok(())
}

/// The Redis Cluster hash slot of a key (tests prove that each script's keys share one).
#[cfg(test)]
pub(super) fn slot(key: &str) -> u16 {
    super::link::key_slot(key.as_bytes())
}

/// What a count script did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wrote {
    /// The totals before and after; `held`: this node still has a share there.
    Totals { before: i64, after: i64, held: bool },
    /// Peers reaped this node incarnation there: nothing was written.
    Fenced,
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn items(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) => Some(a),
        _ => None,
    }
}

/// Reads a count script's answer: `{-1}` (fenced) or `{before, after, held}`.
pub(super) fn parse_wrote(v: &Value) -> Result<Wrote, String> {
    let a = items(v).ok_or("not an array")?;
    match a {
        [x] if int(x) == Some(-1) => Ok(Wrote::Fenced),
        [b, a, h] => match (int(b), int(a), int(h)) {
            (Some(before), Some(after), Some(held)) if before >= 0 && after >= 0 => {
                Ok(Wrote::Totals {
                    before,
                    after,
                    held: held != 0,
                })
            }
            _ => Err("totals are not counts".into()),
        },
        _ => Err(format!("{} items where 1 or 3 were expected", a.len())),
    }
}

/// What one step of reaping a channel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReapedChannel {
    /// Subscribers of the channel before and after this step.
    pub before: i64,
    pub after: i64,
    /// Where the scan of the dead node's members goes on ("0": done).
    pub cursor: String,
    /// Members with no connection left anywhere.
    pub removed: Vec<String>,
}

/// Reads the channel reap script's answer: `{before, after, cursor, user...}`.
pub(super) fn parse_reaped(v: &Value) -> Result<ReapedChannel, String> {
    let a = items(v).ok_or("not an array")?;
    if a.len() < 3 {
        return Err(format!("{} items where 3 or more were expected", a.len()));
    }
    let (Some(before), Some(after), Some(cursor)) = (int(&a[0]), int(&a[1]), text(&a[2])) else {
        return Err("totals or cursor unreadable".into());
    };
    let removed = a[3..]
        .iter()
        .map(|u| text(u).ok_or("a member id is not text"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ReapedChannel {
        before,
        after,
        cursor,
        removed,
    })
}

/// How a note's transitions are announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Mode {
    /// Rewriting this node's share after Redis lost it (a restart): nothing changed for
    /// anyone, so nothing is announced.
    Quiet,
    /// A change on this node: announced as it happened.
    Loud,
    /// Rewriting this node's share after peers reaped it (announced as removed): every
    /// change is announced, a member's arrival to this node's own connections too (they
    /// heard it removed).
    Rewrite,
}

/// A total as Redis returned it (never below zero: the scripts clamp).
fn total(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The transitions of a channel's subscriber total going from `before` to `after`.
pub(super) fn channel_transitions(
    app: &Arc<str>,
    channel: &ChannelName,
    before: i64,
    after: i64,
) -> Vec<Transition> {
    Transition::of_channel(app, channel, total(before), total(after))
}

/// The transition of a member's connection total going from `before` to `after`; `except`:
/// the connection that joined (it is told by its subscribe, not by `member_added`).
pub(super) fn member_transition(
    app: &Arc<str>,
    channel: &ChannelName,
    user_id: &Arc<str>,
    info: &Arc<str>,
    except: Option<SocketId>,
    (before, after): (i64, i64),
) -> Option<Transition> {
    Transition::of_member(
        app,
        channel,
        user_id,
        info,
        except,
        (total(before), total(after)),
    )
}

/// The transition of a user's signed-in total going from `before` to `after`.
pub(super) fn user_transition(
    app: &Arc<str>,
    user_id: &Arc<str>,
    (before, after): (i64, i64),
) -> Option<Transition> {
    Transition::of_user(app, user_id, (total(before), total(after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_channels_keys_share_one_slot_with_its_pubsub_channel() {
        let k = ChannelKeys::new("hp", "app-1", "presence-room");
        assert_eq!(k.shares, "hp:cs:{app-1:presence-room}");
        assert_eq!(k.members("77.0"), "hp:pn:{app-1:presence-room}:77.0");
        let broker = "hp:c:{app-1:presence-room}";
        let cache = "hp:cache:{app-1:presence-room}";
        for key in [
            &k.shares,
            &k.total,
            &k.member_totals,
            &k.info,
            &k.fence,
            &k.members("77.0"),
        ] {
            assert_eq!(slot(key), slot(broker), "{key}");
            assert_eq!(slot(key), slot(cache), "{key}");
        }
        assert_ne!(
            slot(&k.shares),
            slot(&ChannelKeys::new("hp", "app-1", "presence-other").shares)
        );
    }

    #[test]
    fn a_users_keys_share_one_slot_whatever_the_user_id() {
        for user in ["u1", "we}ird{", "a:b", "{x}"] {
            let k = UserKeys::new("hp", "app", user);
            assert_eq!(slot(&k.shares), slot(&k.total), "{user}");
            assert_eq!(slot(&k.shares), slot(&k.fence), "{user}");
        }
        let n = NodeKeys::new("hp", "12.3");
        let all = [
            &n.heartbeat,
            &n.alive,
            &n.gone,
            &n.claim,
            &n.channels,
            &n.users,
        ];
        assert!(all.iter().all(|k| slot(k) == slot(&n.heartbeat)));
        assert_eq!(n.channels, "hp:nc:{n:12.3}");
    }

    #[test]
    fn prefixes_with_braces_are_refused_with_the_setting_named() {
        assert!(check_prefix("herald").is_ok());
        let e = check_prefix("a{b").unwrap_err();
        assert!(e.contains("redis.prefix") && e.contains("a{b"), "{e}");
        assert!(check_prefix("a}b").is_err());
    }

    #[test]
    fn list_entries_round_trip() {
        assert_eq!(
            parse_entry(&entry("app", "presence-x")),
            Some(("app", "presence-x"))
        );
        assert_eq!(
            parse_entry(&entry("app", "user\nwith newline")),
            Some(("app", "user\nwith newline"))
        );
        assert_eq!(parse_entry("no newline"), None);
        assert_eq!(parse_entry("\nx"), None);
        assert_eq!(parse_entry("app\n"), None);
    }

    #[test]
    fn count_answers_parse() {
        let v = Value::Array(vec![Value::Int(0), Value::Int(2), Value::Int(1)]);
        assert_eq!(
            parse_wrote(&v),
            Ok(Wrote::Totals {
                before: 0,
                after: 2,
                held: true
            })
        );
        assert_eq!(
            parse_wrote(&Value::Array(vec![Value::Int(-1)])),
            Ok(Wrote::Fenced)
        );
        for bad in [
            Value::Int(3),
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(1), Value::Int(2)]),
            Value::Array(vec![Value::Int(-3), Value::Int(2), Value::Int(0)]),
            Value::Array(vec![bulk("x"), Value::Int(2), Value::Int(0)]),
        ] {
            assert!(parse_wrote(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reap_answers_parse() {
        let v = Value::Array(vec![
            Value::Int(3),
            Value::Int(1),
            bulk("0"),
            bulk("u1"),
            bulk("u 2"),
        ]);
        assert_eq!(
            parse_reaped(&v),
            Ok(ReapedChannel {
                before: 3,
                after: 1,
                cursor: "0".into(),
                removed: vec!["u1".into(), "u 2".into()],
            })
        );
        let more = Value::Array(vec![Value::Int(0), Value::Int(0), bulk("1792")]);
        assert_eq!(parse_reaped(&more).unwrap().cursor, "1792");
        assert!(parse_reaped(&Value::Array(vec![Value::Int(0), Value::Int(0)])).is_err());
        assert!(parse_reaped(&Value::Array(vec![
            Value::Int(0),
            Value::Int(0),
            bulk("0"),
            Value::Nil
        ]))
        .is_err());
    }

    #[test]
    fn totals_become_transitions() {
        let app: Arc<str> = Arc::from("a");
        let ch = ChannelName::parse("c", 200).unwrap();
        let kinds = |v: Vec<Transition>| {
            v.iter()
                .map(|t| match t {
                    Transition::Occupied { .. } => "occupied".to_string(),
                    Transition::Vacated { .. } => "vacated".to_string(),
                    Transition::Count { count, .. } => format!("count {count}"),
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kinds(channel_transitions(&app, &ch, 0, 2)),
            ["occupied", "count 2"]
        );
        assert_eq!(kinds(channel_transitions(&app, &ch, 2, 0)), ["vacated"]);
        assert_eq!(kinds(channel_transitions(&app, &ch, 2, 3)), ["count 3"]);
        assert!(channel_transitions(&app, &ch, 2, 2).is_empty());

        let u: Arc<str> = Arc::from("u");
        let info: Arc<str> = Arc::from("{}");
        let s = Some(SocketId::new(1, 2));
        assert!(matches!(
            member_transition(&app, &ch, &u, &info, s, (0, 1)),
            Some(Transition::MemberAdded { except, .. }) if except == s
        ));
        assert!(matches!(
            member_transition(&app, &ch, &u, &info, s, (2, 0)),
            Some(Transition::MemberRemoved { .. })
        ));
        assert_eq!(member_transition(&app, &ch, &u, &info, s, (1, 2)), None);
        assert!(matches!(
            user_transition(&app, &u, (0, 1)),
            Some(Transition::Online { online: true, .. })
        ));
        assert!(matches!(
            user_transition(&app, &u, (1, 0)),
            Some(Transition::Online { online: false, .. })
        ));
        assert_eq!(user_transition(&app, &u, (1, 2)), None);
    }

    #[test]
    fn modes_order_so_that_a_merge_keeps_the_loudest() {
        assert!(Mode::Quiet < Mode::Loud && Mode::Loud < Mode::Rewrite);
    }
}
