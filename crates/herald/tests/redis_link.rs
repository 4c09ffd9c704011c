//! `Link`, the Redis connection layer, against real engines it starts itself: one server, one
//! over TLS with an ACL user, a primary behind three Sentinels, and a 3-primary Redis Cluster.
//! For each: commands, pipelines and scripts work; a batch published across many channels
//! arrives complete and in order per channel; subscribing and unsubscribing change what
//! arrives. Then the faults: a restarted server, a Sentinel failover, a cluster primary lost.

mod support;

use herald::cluster::redis::link::{key_slot, Link, LinkOptions, Messages, Query, RedisMode};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::engines;

type Batch = Vec<(Vec<u8>, Vec<u8>)>;

/// The next message, failing after `ms`.
async fn next(msgs: &mut Messages, ms: u64, what: &str) -> (Vec<u8>, Vec<u8>) {
    match tokio::time::timeout(Duration::from_millis(ms), msgs.recv()).await {
        Ok(Some(m)) => m,
        Ok(None) => panic!("{what}: the stream ended ({:?})", msgs.end_reason()),
        Err(_) => panic!("{what}: no message within {ms} ms"),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A command, a pipeline on one slot and a script work.
async fn commands_work(link: &Link, tag: &str) {
    let key = format!("{{{tag}}}:k");
    let () = link
        .query(Query::Cmd(redis::cmd("SET").arg(&key).arg("v1")))
        .await
        .unwrap();
    let v: String = link
        .query(Query::Cmd(redis::cmd("GET").arg(&key)))
        .await
        .unwrap();
    assert_eq!(v, "v1");
    let n = format!("{{{tag}}}:n");
    let (a, b, c): (i64, i64, String) = link
        .query(Query::Pipe(
            redis::pipe()
                .cmd("DEL")
                .arg(&n)
                .ignore()
                .cmd("INCR")
                .arg(&n)
                .cmd("INCRBY")
                .arg(&n)
                .arg(5)
                .cmd("GET")
                .arg(&key),
        ))
        .await
        .unwrap();
    assert_eq!((a, b, c.as_str()), (1, 6, "v1"));
    let script = redis::Script::new("return redis.call('GET', KEYS[1]) .. ARGV[1]");
    let got: String = link
        .query(Query::Script(script.key(&key).arg("+x")))
        .await
        .unwrap();
    assert_eq!(got, "v1+x");
}

/// Channels spread over many slots, and a few sharing one hash tag (one slot).
fn channels(tag: &str) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = (0..36)
        .map(|i| format!("{tag}:ch{i}").into_bytes())
        .collect();
    v.extend((0..4).map(|i| format!("{{{tag}-same}}:ch{i}").into_bytes()));
    v
}

/// Reads messages until `want` has arrived for each channel; fails on anything unexpected.
async fn receive_all(msgs: &mut Messages, want: &HashMap<Vec<u8>, Vec<Vec<u8>>>, what: &str) {
    let total: usize = want.values().map(Vec::len).sum();
    let mut got: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
    for i in 0..total {
        let (c, p) = next(msgs, 10_000, &format!("{what}: message {i} of {total}")).await;
        assert!(want.contains_key(&c), "{what}: a message on {}", text(&c));
        got.entry(c).or_default().push(p);
    }
    for (c, w) in want {
        let g = got.get(c).cloned().unwrap_or_default();
        assert_eq!(
            g.iter().map(|p| text(p)).collect::<Vec<_>>(),
            w.iter().map(|p| text(p)).collect::<Vec<_>>(),
            "{what}: the messages of {} in order",
            text(c)
        );
    }
}

/// Publish and subscribe: batches across many channels arrive complete and in order per
/// channel; unsubscribing stops a channel, subscribing again starts it.
async fn pubsub_works(link: &Link, tag: &str) {
    let chans = channels(tag);
    let (mut subs, mut msgs) = link.subscriber().await.unwrap();
    subs.subscribe(&chans).await.unwrap();
    let mut want: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
    for call in 0..3 {
        let mut batch: Batch = Vec::new();
        for k in 0..10 {
            for c in &chans {
                let p = format!("{call}.{k}").into_bytes();
                want.entry(c.clone()).or_default().push(p.clone());
                batch.push((c.clone(), p));
            }
        }
        link.publish(&batch).await.unwrap();
    }
    receive_all(&mut msgs, &want, "three batches of 400 messages").await;

    let (gone, kept) = chans.split_at(20);
    subs.unsubscribe(gone).await.unwrap();
    let mut batch: Batch = chans
        .iter()
        .map(|c| (c.clone(), b"after".to_vec()))
        .collect();
    batch.extend(kept.iter().map(|c| (c.clone(), b"marker".to_vec())));
    link.publish(&batch).await.unwrap();
    let want: HashMap<_, _> = kept
        .iter()
        .map(|c| (c.clone(), vec![b"after".to_vec(), b"marker".to_vec()]))
        .collect();
    receive_all(&mut msgs, &want, "after unsubscribing from 20 channels").await;

    subs.subscribe(&gone[..1]).await.unwrap();
    link.publish(&[(gone[0].clone(), b"back".to_vec())])
        .await
        .unwrap();
    let (c, p) = next(&mut msgs, 5000, "a channel subscribed again").await;
    assert_eq!((text(&c), text(&p)), (text(&gone[0]), "back".to_owned()));
    assert_eq!(msgs.backlog(), 0);
}

/// Retries `f` until it succeeds, for at most `limit`; returns the time it took.
async fn within<F, Fut>(limit: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let t0 = Instant::now();
    loop {
        match f().await {
            Ok(()) => return t0.elapsed(),
            Err(e) if t0.elapsed() > limit => panic!("{what}: not within {limit:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The port of the server that the link's commands reach.
async fn served_by(link: &Link) -> redis::RedisResult<u16> {
    let (_, port): (String, String) = link
        .query(Query::Cmd(redis::cmd("CONFIG").arg("GET").arg("port")))
        .await?;
    Ok(port.parse().unwrap())
}

async fn ends(msgs: &mut Messages, ms: u64, what: &str) {
    match tokio::time::timeout(Duration::from_millis(ms), msgs.recv()).await {
        Ok(None) => {}
        Ok(Some((c, _))) => panic!("{what}: a message on {} instead of the end", text(&c)),
        Err(_) => panic!("{what}: the stream did not end within {ms} ms"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_works_and_survives_a_restart_without_a_new_link() {
    let mut r = engines::start_redis();
    let link = Link::new(std::slice::from_ref(&r.url), RedisMode::Standalone, None).unwrap();
    commands_work(&link, "sa").await;
    pubsub_works(&link, "sa").await;

    let (mut subs, mut msgs) = link.subscriber().await.unwrap();
    subs.subscribe(&[b"sa:live".to_vec()]).await.unwrap();
    // Killed and started again between two commands: the first command after the restart
    // meets the dead connection, which is replaced, and succeeds on the new one.
    r.server.restart();
    commands_work(&link, "sa").await;
    ends(&mut msgs, 5000, "a subscriber of the restarted server").await;
    assert!(
        msgs.end_reason().is_some_and(|r| r.contains("lost")),
        "{:?}",
        msgs.end_reason()
    );
    assert!(subs.subscribe(&[b"x".to_vec()]).await.is_err());

    // While it is down, commands fail promptly; once it is back, they work again.
    r.server.kill();
    let t0 = Instant::now();
    let e = link
        .query::<String>(Query::Cmd(&redis::cmd("PING")))
        .await
        .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(e.is_io_error() || e.is_connection_refusal(), "{e}");
    assert!(link
        .publish(&[(b"c".to_vec(), b"p".to_vec())])
        .await
        .is_err());
    r.server.restart();
    let v: String = link.query(Query::Cmd(&redis::cmd("PING"))).await.unwrap();
    assert_eq!(v, "PONG");
    pubsub_works(&link, "sa2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_an_acl_user_and_a_ca_file() {
    let r = engines::start_redis_tls("herald", "tls-pw-1");
    let ca = r.ca_file.display().to_string();
    let options = LinkOptions {
        ca_file: Some(ca),
        sentinel_password: None,
    };
    let link = Link::with_options(
        std::slice::from_ref(&r.url),
        RedisMode::Standalone,
        None,
        &options,
    )
    .unwrap();
    assert!(!link.shown().contains("tls-pw-1"), "{}", link.shown());
    commands_work(&link, "tls").await;
    pubsub_works(&link, "tls").await;
    let who: String = link
        .query(Query::Cmd(redis::cmd("ACL").arg("WHOAMI")))
        .await
        .unwrap();
    assert_eq!(who, "herald");

    // The certificate is checked: without the CA the handshake fails; a wrong password is
    // refused as such.
    let untrusted = Link::new(std::slice::from_ref(&r.url), RedisMode::Standalone, None).unwrap();
    let e = untrusted
        .query::<String>(Query::Cmd(&redis::cmd("PING")))
        .await
        .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    let wrong = r.url.replace("tls-pw-1", "nope");
    let wrong = Link::with_options(&[wrong], RedisMode::Standalone, None, &options).unwrap();
    let e = wrong
        .query::<String>(Query::Cmd(&redis::cmd("PING")))
        .await
        .unwrap_err();
    assert!(
        e.kind() == redis::ErrorKind::AuthenticationFailed || e.code() == Some("WRONGPASS"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_follows_the_primary_through_a_failover() {
    let mut s = engines::start_sentinel();
    let options = LinkOptions {
        ca_file: None,
        sentinel_password: Some(s.sentinel_password.clone()),
    };
    let link = Link::with_options(&s.urls, RedisMode::Sentinel, Some(&s.master), &options).unwrap();
    commands_work(&link, "sen").await;
    pubsub_works(&link, "sen").await;
    assert_eq!(served_by(&link).await.unwrap(), s.primary.port);

    let (mut subs, mut msgs) = link.subscriber().await.unwrap();
    subs.subscribe(&[b"sen:live".to_vec()]).await.unwrap();
    let replica = s.replica.port;
    s.kill_primary();
    ends(&mut msgs, 5000, "a subscriber of the killed primary").await;
    let took = within(
        Duration::from_secs(10),
        "commands through the new primary",
        || async {
            let port = served_by(&link).await.map_err(|e| e.to_string())?;
            if port != replica {
                return Err(format!("served by {port}"));
            }
            let () = link
                .query(Query::Cmd(redis::cmd("SET").arg("sen:after").arg("1")))
                .await
                .map_err(|e| e.to_string())?;
            link.publish(&[(b"sen:after".to_vec(), b"1".to_vec())])
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
    eprintln!("Sentinel failover: commands and publishes work again after {took:?}");
    assert_eq!(s.primary_port(), Some(replica));
    commands_work(&link, "sen").await;
    pubsub_works(&link, "sen2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_asked_of_a_sentinel_moves_commands_and_subscribers() {
    let s = engines::start_sentinel();
    let options = LinkOptions {
        ca_file: None,
        sentinel_password: Some(s.sentinel_password.clone()),
    };
    let link = Link::with_options(&s.urls, RedisMode::Sentinel, Some(&s.master), &options).unwrap();
    commands_work(&link, "sf").await;
    let (mut subs, mut msgs) = link.subscriber().await.unwrap();
    subs.subscribe(&[b"sf:live".to_vec()]).await.unwrap();
    let old = s.primary.port;
    let new = s.replica.port;
    s.failover().unwrap();
    // The old primary stays up as a replica; the Sentinels close its clients' connections, so
    // the link asks them again (also after a READONLY reply) and reaches the new primary.
    let took = within(
        Duration::from_secs(10),
        "commands through the new primary",
        || async {
            let port = served_by(&link).await.map_err(|e| e.to_string())?;
            if port != new {
                return Err(format!("served by {port}, not {new}"));
            }
            let () = link
                .query(Query::Cmd(redis::cmd("SET").arg("sf:after").arg("1")))
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        },
    )
    .await;
    eprintln!("SENTINEL FAILOVER: commands reach the new primary after {took:?}");
    assert_ne!(old, new);
    ends(&mut msgs, 5000, "a subscriber of the demoted primary").await;
    pubsub_works(&link, "sf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_routes_by_slot_and_survives_a_lost_primary() {
    let mut c = engines::start_cluster();
    let link = Link::new(&c.urls, RedisMode::Cluster, None).unwrap();
    // Keys and channels on every primary.
    for tag in ["a", "b", "c", "d", "e", "f"] {
        commands_work(&link, tag).await;
    }
    pubsub_works(&link, "cl").await;

    let victim_channel = b"cl:victim".to_vec();
    let slot = key_slot(&victim_channel);
    let victim = c.primary_of(slot);
    let (mut subs, mut msgs) = link.subscriber().await.unwrap();
    subs.subscribe(std::slice::from_ref(&victim_channel))
        .await
        .unwrap();
    let victim_port = c.nodes[victim].port;
    c.nodes[victim].kill();
    ends(&mut msgs, 5000, "a subscriber of the killed primary").await;
    let took = within(
        Duration::from_secs(15),
        "the cluster after its replica took over",
        || async {
            let () = link
                .query(Query::Cmd(redis::cmd("SET").arg("{cl:victim}:k").arg("1")))
                .await
                .map_err(|e| e.to_string())?;
            link.publish(&[(victim_channel.clone(), b"1".to_vec())])
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
    eprintln!("Redis Cluster failover: commands and publishes work again after {took:?}");
    let now = c.primary_of(slot);
    assert_ne!(c.nodes[now].port, victim_port);

    // A new subscriber reaches the promoted replica for that slot.
    let (mut subs, mut msgs) = link.subscriber().await.unwrap();
    subs.subscribe(&[victim_channel.clone(), b"cl:other".to_vec()])
        .await
        .unwrap();
    link.publish(&[
        (victim_channel.clone(), b"v".to_vec()),
        (b"cl:other".to_vec(), b"o".to_vec()),
    ])
    .await
    .unwrap();
    let mut got = vec![
        next(&mut msgs, 5000, "after the failover").await,
        next(&mut msgs, 5000, "after the failover").await,
    ];
    got.sort();
    assert_eq!(
        got,
        vec![
            (b"cl:other".to_vec(), b"o".to_vec()),
            (victim_channel.clone(), b"v".to_vec())
        ]
    );
    for tag in ["a", "b", "c", "d", "e", "f"] {
        commands_work(&link, tag).await;
    }
    pubsub_works(&link, "cl2").await;

    // A primary handed over to its replica (CLUSTER FAILOVER) stays up but drops the slot's
    // subscriptions itself (SUNSUBSCRIBE): the stream ends, and publishes follow the slot.
    // (On a primary that still has a replica: the one promoted above has none.)
    let (moved, slot, heir) = (0..100)
        .find_map(|i| {
            let ch = format!("cl:moved{i}").into_bytes();
            let slot = key_slot(&ch);
            let heir = c.replica_of(c.primary_of(slot))?;
            Some((ch, slot, heir))
        })
        .unwrap();
    let (mut subs, mut msgs) = link.subscriber().await.unwrap();
    subs.subscribe(std::slice::from_ref(&moved)).await.unwrap();
    c.nodes[heir].cli(&["CLUSTER", "FAILOVER"]).unwrap();
    ends(&mut msgs, 5000, "a subscriber of the demoted primary").await;
    assert!(
        msgs.end_reason()
            .is_some_and(|r| r.contains("ended a subscription")),
        "{:?}",
        msgs.end_reason()
    );
    // A failed subscribe ends its subscriber: each try makes a new one, as callers do.
    let t0 = Instant::now();
    let (_subs, mut msgs) = loop {
        let (mut subs, msgs) = link.subscriber().await.unwrap();
        match subs.subscribe(std::slice::from_ref(&moved)).await {
            Ok(()) => break (subs, msgs),
            Err(e) if t0.elapsed() > Duration::from_secs(5) => panic!("subscribing: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    link.publish(&[(moved.clone(), b"m".to_vec())])
        .await
        .unwrap();
    assert_eq!(next(&mut msgs, 5000, "after the handover").await.1, b"m");
    assert_eq!(c.primary_of(slot), heir);
}
