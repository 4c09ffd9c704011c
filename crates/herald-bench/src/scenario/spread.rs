//! Where a scenario's clients go when the target is several nodes of a cluster: which node each
//! subscriber connects to, and through which node's HTTP API each event is published. Pure
//! functions of indices, so that a subscriber can tell, for every event it receives, whether it
//! was published through its own node (local) or another one (cross-node).

use clap::ValueEnum;

/// How publishers use several HTTP API endpoints (`--api-ports`).
///
/// Order per channel is defined by one publisher per channel: each channel's events are
/// numbered 0, 1, 2, ... by the one publisher that owns it, which sends event n + 1 only once
/// the API has answered event n. The numbering is then the order in which the cluster accepted
/// them, whichever node accepted each, and any subscriber that sees them otherwise saw the
/// cluster reorder them. (Two publishers on one channel at once would accept events in no
/// defined order, so no subscriber could be said to see the wrong one.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PublishVia {
    /// Each publisher sends through one API, publisher k through API k mod A: each channel's
    /// events all enter the cluster through the same node, and the channels are split over
    /// the nodes.
    Split,
    /// Each channel's consecutive events go through the APIs in turn (the event numbered s
    /// through API s mod A), each answered before the next is sent: the path that exposes
    /// reordering between nodes.
    Alternate,
}

/// The publisher that owns `channel` (publisher k owns channels k, k + P, k + 2P, ...).
pub fn publisher_of(channel: usize, publishers: usize) -> usize {
    channel % publishers.max(1)
}

/// The API (index into `--api-ports`) the event numbered `seq` of a channel owned by
/// `publisher` goes through.
pub fn api_of(via: PublishVia, publisher: usize, seq: u64, apis: usize) -> usize {
    let apis = apis.max(1);
    match via {
        PublishVia::Split => publisher % apis,
        PublishVia::Alternate => (seq % apis as u64) as usize,
    }
}

/// The node (index into `--ws-ports`) of subscriber `i`, who listens on channel `i mod C`: the
/// j-th subscriber of channel c (j = i div C) goes to node (c + j) mod N. Each channel's
/// subscribers are spread over all nodes (as evenly as their number allows) and so is each
/// node's share of the channels, whatever C and N are (i mod N alone would put every
/// subscriber of a channel on one node whenever N divides C).
pub fn node_of_subscriber(i: usize, channels: usize, nodes: usize) -> usize {
    let channels = channels.max(1);
    (i % channels + i / channels) % nodes.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_a_channel_on_one_api_and_alternate_takes_turns() {
        // 4 publishers over 2 APIs: publishers 0 and 2 through API 0, 1 and 3 through API 1.
        let apis: Vec<usize> = (0..4).map(|k| api_of(PublishVia::Split, k, 7, 2)).collect();
        assert_eq!(apis, vec![0, 1, 0, 1]);
        for seq in 0..10 {
            assert_eq!(api_of(PublishVia::Split, 3, seq, 2), 1);
            assert_eq!(api_of(PublishVia::Alternate, 3, seq, 2), seq as usize % 2);
        }
        // One API (or none given): everything through it.
        assert_eq!(api_of(PublishVia::Alternate, 5, 9, 1), 0);
        assert_eq!(api_of(PublishVia::Split, 5, 9, 0), 0);
    }

    #[test]
    fn every_channel_reaches_every_node() {
        for (subs, channels, nodes) in [(1000, 100, 3), (1000, 100, 2), (60, 6, 3), (40, 4, 4)] {
            let mut on = vec![vec![0u32; nodes]; channels];
            let mut per_node = vec![0u32; nodes];
            for i in 0..subs {
                let n = node_of_subscriber(i, channels, nodes);
                on[i % channels][n] += 1;
                per_node[n] += 1;
            }
            for (c, counts) in on.iter().enumerate() {
                let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                assert!(
                    *lo > 0 && hi - lo <= 1,
                    "{subs}/{channels}/{nodes}: channel {c} {counts:?}"
                );
            }
            let (lo, hi) = (
                per_node.iter().min().unwrap(),
                per_node.iter().max().unwrap(),
            );
            assert!(hi - lo <= 1, "{per_node:?}");
        }
        // Fewer subscribers than channels: the channels themselves are spread.
        let nodes: Vec<usize> = (0..6).map(|i| node_of_subscriber(i, 100, 3)).collect();
        assert_eq!(nodes, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(node_of_subscriber(5, 0, 0), 0);
    }

    /// One channel, its events alternating between two nodes' APIs, each published once the
    /// one before was answered (publish instants 0, 1, 2, ...). A subscriber on node 0 gets the
    /// events published through its own node at once and the others `delay` slots later: the
    /// order it sees is the cluster's order only while the cross-node path is faster than the
    /// gap between two publishes, and the tracker counts every event that came late.
    #[test]
    fn a_slower_cross_node_path_shows_as_reordering_in_alternate_mode() {
        use crate::stats::{Delivery, SeqTracker};
        let arrivals = |via: PublishVia, delay: u64| {
            let mut at: Vec<(u64, u64)> = (0..100u64)
                .map(|seq| {
                    let local = api_of(via, 0, seq, 2) == 0;
                    (seq + if local { 0 } else { delay }, seq)
                })
                .collect();
            // Ties: the earlier event first.
            at.sort();
            let mut t = SeqTracker::default();
            at.iter().for_each(|&(_, seq)| t.record(seq));
            let mut d = Delivery::default();
            d.add(&t, 100);
            d
        };
        // Split: every event of the channel through one node, any delay keeps the order.
        let d = arrivals(PublishVia::Split, 5);
        assert_eq!(
            (d.delivered, d.out_of_order, d.adjacent_inversions),
            (100, 0, 0)
        );
        // Alternate, cross-node path faster than the gap between publishes: in order.
        assert_eq!(arrivals(PublishVia::Alternate, 0).out_of_order, 0);
        // Alternate, cross-node path 3 slots slow: 0 2 1 4 3 6 5 ... each remote event (odd)
        // arrives after the local one published next, all but the last (99, after 98).
        let d = arrivals(PublishVia::Alternate, 3);
        assert_eq!((d.delivered, d.lost, d.duplicates), (100, 0, 0));
        assert_eq!(
            (d.out_of_order, d.adjacent_inversions, d.adjacent_pairs),
            (49, 49, 99)
        );
    }

    #[test]
    fn channels_are_owned_by_publishers_in_turn() {
        let owners: Vec<usize> = (0..6).map(|c| publisher_of(c, 4)).collect();
        assert_eq!(owners, vec![0, 1, 2, 3, 0, 1]);
        assert_eq!(publisher_of(3, 0), 0);
    }
}
