//! Heartbeats, and the reaping of nodes whose heartbeat is gone.

use super::*;

/// Removes a dead node's share; returns the transitions as lines `kind\napp\nname[\nuser]`.
pub(super) const REAP: &str = r"
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return {} end
local p, n, out = ARGV[2], ARGV[1], {}
local function drop(share, total_of, info_of, kind_gone, kind_count)
  local rows = redis.call('HGETALL', share)
  for i = 1, #rows, 2 do
    local app, rest = string.match(rows[i], '^(.-)\n(.*)$')
    local key, field = total_of(app, rest)
    local after = redis.call('HINCRBY', key, field, -tonumber(rows[i + 1]))
    if after <= 0 then
      redis.call('HDEL', key, field)
      if info_of then redis.call('HDEL', info_of(app, rest), field) end
      table.insert(out, kind_gone .. '\n' .. app .. '\n' .. rest)
    elseif kind_count then
      table.insert(out, kind_count .. '\n' .. app .. '\n' .. rest .. '\n' .. after)
    end
  end
  redis.call('DEL', share)
end
drop(p .. ':node:' .. n .. ':ch', function(app, ch) return p .. ':ch:' .. app, ch end, nil, 'v', 'c')
drop(p .. ':node:' .. n .. ':pu', function(app, rest)
  local ch, user = string.match(rest, '^(.-)\n(.*)$')
  return p .. ':pu:' .. app .. ':' .. ch, user
end, function(app, rest)
  local ch = string.match(rest, '^(.-)\n')
  return p .. ':pi:' .. app .. ':' .. ch
end, 'm', nil)
drop(p .. ':node:' .. n .. ':us', function(app, user) return p .. ':us:' .. app, user end, nil, 'o', nil)
redis.call('DEL', p .. ':alive:' .. n)
return out
";

impl RedisAdapter {
    /// Heartbeats, resynchronises after an outage, and reaps dead peers.
    pub(super) async fn heartbeat(self) {
        let reap = Script::new(REAP);
        let node = self.inner.node_id.to_string();
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        loop {
            tick.tick().await;
            // The link replaces a connection Redis dropped (a restart) and retries once.
            if let Err(e) = self.beat(&node, &reap).await {
                tracing::debug!(error = %e, "heartbeat failed");
                self.set_up(false);
            }
        }
    }

    pub(super) async fn beat(&self, node: &str, reap: &Script) -> redis::RedisResult<()> {
        let nodes = self.key(&["nodes"]);
        let _: () = self
            .query(Query::Cmd(
                redis::cmd("SET")
                    .arg(self.key(&["hb", node]))
                    .arg(1)
                    .arg("PX")
                    .arg(HEARTBEAT_TTL_MS),
            ))
            .await?;
        let _: () = self
            .query(Query::Cmd(redis::cmd("SADD").arg(&nodes).arg(node)))
            .await?;
        // A missing marker means Redis lost our share (restart) or a peer reaped us (outage).
        let fresh: bool = self
            .query(Query::Cmd(
                redis::cmd("SET")
                    .arg(self.key(&["alive", node]))
                    .arg(1)
                    .arg("NX"),
            ))
            .await?;
        self.set_up(true);
        if fresh {
            let notes = self.engine().local_notes();
            tracing::info!(
                node,
                entries = notes.len(),
                "writing this node's share of the cluster state"
            );
            for n in notes {
                let _ = self.inner.notes.send((n, true));
            }
        }
        let members: Vec<String> = self
            .query(Query::Cmd(redis::cmd("SMEMBERS").arg(&nodes)))
            .await?;
        for peer in members.iter().filter(|m| m.as_str() != node) {
            let alive: bool = self
                .query(Query::Cmd(
                    redis::cmd("EXISTS").arg(self.key(&["hb", peer])),
                ))
                .await?;
            if alive {
                continue;
            }
            let mut inv = reap.prepare_invoke();
            inv.key(&nodes).arg(peer).arg(&self.inner.prefix);
            let lines: Vec<String> = self.query(Query::Script(&inv)).await?;
            tracing::warn!(node = %peer, transitions = lines.len(), "removed a dead node's connections from the cluster");
            for line in lines {
                self.reaped(&line);
            }
        }
        Ok(())
    }

    /// Applies one transition line of the reap script.
    pub(super) fn reaped(&self, line: &str) {
        let parts: Vec<&str> = line.split('\n').collect();
        let app: Arc<str> = Arc::from(*parts.get(1).unwrap_or(&""));
        let channel = parts
            .get(2)
            .and_then(|c| ChannelName::parse(c, usize::MAX).ok());
        let t = match (parts.first().copied(), channel) {
            (Some("v"), Some(channel)) => Transition::Vacated { app, channel },
            (Some("c"), Some(channel)) => match parts.get(3).and_then(|n| n.parse().ok()) {
                Some(count) => Transition::Count {
                    app,
                    channel,
                    count,
                },
                None => return,
            },
            (Some("m"), Some(channel)) => match parts.get(3) {
                Some(user) => Transition::MemberRemoved {
                    app,
                    channel,
                    user_id: Arc::from(*user),
                },
                None => return,
            },
            (Some("o"), _) => match parts.get(2) {
                Some(user) => Transition::Online {
                    app,
                    user_id: Arc::from(*user),
                    online: false,
                },
                None => return,
            },
            _ => return,
        };
        self.engine().apply(t);
    }
}
