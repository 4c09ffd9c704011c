//! Users: sign-in, sign-out, watchlists and terminating a user's connections.

use super::{Engine, Users};
use crate::cluster::{ClusterNote, Envelope, Sent, Topic};
use crate::conn::{Conn, Frame};
use herald_protocol::{codes, encode, SocketId};
use std::sync::Arc;

impl Engine {
    /// Records a sign-in. Queues the watchlist statuses for this connection (when the app has
    /// watchlist events on) and tells watchers when the user just came online.
    pub fn signin(&self, conn: &Arc<Conn>, user_id: &str, watchlist: &[String]) {
        self.signin_with(conn, user_id, watchlist, &[]);
    }

    /// As [`Engine::signin`]; `remote_online` lists watched users online on other nodes.
    pub fn signin_with(
        &self,
        conn: &Arc<Conn>,
        user_id: &str,
        watchlist: &[String],
        remote_online: &[String],
    ) {
        let st = self.state_of(conn);
        let watch = conn.with_app(|a| a.enable_watchlist_events);
        let mut users = st.users.lock();
        let uid: Arc<str> = Arc::from(user_id);
        let conns = users.signed_in.entry(uid.clone()).or_default();
        let came_online = conns.is_empty();
        conns.push(conn.clone());
        let count = conns.len();
        let clustered = self.clustered();
        for w in watchlist {
            let by = users.watchers.entry(Arc::from(w.as_str())).or_default();
            if clustered && by.is_empty() {
                // Under the users lock, so the broker sees interest changes in order.
                self.broker().subscribe(Topic::Watchers {
                    app: st.id.clone(),
                    user: Arc::from(w.as_str()),
                });
            }
            *by.entry(uid.clone()).or_default() += 1;
        }
        if clustered && count == 1 {
            self.broker().subscribe(Topic::User {
                app: st.id.clone(),
                user: uid.clone(),
            });
        }
        if clustered {
            self.note(ClusterNote::UserCount {
                app: st.id.clone(),
                user_id: uid.clone(),
                count,
            });
        }
        if !watch {
            return;
        }
        if !watchlist.is_empty() {
            let (online, offline): (Vec<&str>, Vec<&str>) =
                watchlist.iter().map(String::as_str).partition(|w| {
                    users.signed_in.get(*w).is_some_and(|c| !c.is_empty())
                        || remote_online.iter().any(|r| r == w)
                });
            conn.send(&encode::watchlist_events(&online, &offline).into());
        }
        if came_online && !clustered {
            let frame: Frame = encode::watchlist_events(&[user_id], &[]).into();
            notify_watchers(&users, user_id, &frame, Some(conn.socket_id));
        }
    }

    /// The sign-in of `conn` ends (it disconnects): its watchlist is dropped, and watchers hear
    /// when this was the user's last connection.
    pub(super) fn signout(&self, conn: &Arc<Conn>, user_id: &str, watchlist: &[String]) {
        let st = self.state_of(conn);
        let mut users = st.users.lock();
        let mut went_offline = false;
        let mut left = 0;
        if let Some(conns) = users.signed_in.get_mut(user_id) {
            conns.retain(|c| c.socket_id != conn.socket_id);
            left = conns.len();
            if conns.is_empty() {
                users.signed_in.remove(user_id);
                went_offline = true;
            }
        }
        let clustered = self.clustered();
        if clustered && went_offline {
            self.broker().unsubscribe(Topic::User {
                app: st.id.clone(),
                user: Arc::from(user_id),
            });
        }
        if clustered {
            self.note(ClusterNote::UserCount {
                app: st.id.clone(),
                user_id: Arc::from(user_id),
                count: left,
            });
        }
        for w in watchlist {
            if let Some(by) = users.watchers.get_mut(w.as_str()) {
                if let Some(n) = by.get_mut(user_id) {
                    *n -= 1;
                    if *n == 0 {
                        by.remove(user_id);
                    }
                }
                if by.is_empty() {
                    users.watchers.remove(w.as_str());
                    if clustered {
                        self.broker().unsubscribe(Topic::Watchers {
                            app: st.id.clone(),
                            user: Arc::from(w.as_str()),
                        });
                    }
                }
            }
        }
        if went_offline && !clustered && conn.with_app(|a| a.enable_watchlist_events) {
            let frame: Frame = encode::watchlist_events(&[], &[user_id]).into();
            notify_watchers(&users, user_id, &frame, None);
        }
    }

    /// Closes every connection signed in as `user_id` with 4009, on every node. Returns how many
    /// this node closed at once (clustered, its own come back through the broker: 0).
    pub fn terminate_user(&self, app_id: &str, user_id: &str) -> usize {
        if self.clustered() {
            let topic = Topic::User {
                app: Arc::from(app_id),
                user: Arc::from(user_id),
            };
            // A refusal is the broker's to count and log; this node's connections still close.
            if let Ok(Sent::Queued(_)) = self.broker().publish(topic, Envelope::Terminate) {
                return 0;
            }
        }
        self.terminate_user_local(app_id, user_id)
    }

    /// Closes this node's connections signed in as `user_id` with 4009; returns how many.
    pub fn terminate_user_local(&self, app_id: &str, user_id: &str) -> usize {
        let st = self.state(app_id);
        let users = st.users.lock();
        let conns = users
            .signed_in
            .get(user_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for c in conns {
            c.request_close(codes::UNAUTHORIZED);
        }
        conns.len()
    }
}

/// Sends `frame` to every signed-in connection (but `skip`) of every user watching `user_id`.
pub(super) fn notify_watchers(users: &Users, user_id: &str, frame: &Frame, skip: Option<SocketId>) {
    let Some(by) = users.watchers.get(user_id) else {
        return;
    };
    for watcher in by.keys() {
        for c in users
            .signed_in
            .get(watcher)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if Some(c.socket_id) != skip {
                c.send(frame);
            }
        }
    }
}
