//! A topic's partitions over the brokers that lead them. The metadata,
//! asked of the broker given (the bootstrap), names each partition's leader
//! and each broker's advertised address; offsets and fetches of a partition
//! go to its leader, over one connection per broker, opened when first
//! needed, and a fetch of partitions led by several brokers asks each in
//! turn. A leader that moved answers `NOT_LEADER_OR_FOLLOWER` (a transient
//! error): the caller makes a new client, which reads the metadata again.
//!
//! When the metadata lists a single broker, its partitions are asked of the
//! bootstrap connection: a lone broker reached through a forwarded port may
//! advertise an address this machine cannot reach.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{KafkaClient, KafkaError, KafkaErrorKind, PartitionFetch, TopicMetadata};

/// One topic's partitions, each asked of its leader.
pub struct TopicClient {
    topic: String,
    bootstrap: KafkaClient,
    /// Connection timeout and request timeout of the leaders' connections.
    timeouts: (Duration, Duration),
    metadata: TopicMetadata,
    /// Connections to the leaders, by node id (when several brokers are listed).
    leaders: BTreeMap<i32, KafkaClient>,
}

impl TopicClient {
    /// Connects to `server`, reads `topic`'s metadata. `connect_timeout`
    /// bounds each connection, `request_timeout` each request.
    pub fn connect(
        server: &str,
        topic: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let mut bootstrap = KafkaClient::connect(server, connect_timeout)?;
        bootstrap.set_request_timeout(request_timeout)?;
        let metadata = bootstrap.metadata(topic)?;
        Ok(TopicClient {
            topic: topic.to_owned(),
            bootstrap,
            timeouts: (connect_timeout, request_timeout),
            metadata,
            leaders: BTreeMap::new(),
        })
    }

    /// The topic's partitions, in order.
    pub fn partitions(&self) -> Vec<i32> {
        self.metadata.leaders.iter().map(|&(p, _)| p).collect()
    }

    /// The metadata read at the start.
    pub fn metadata(&self) -> &TopicMetadata {
        &self.metadata
    }

    /// An error naming the bootstrap server.
    pub fn error(&self, kind: KafkaErrorKind) -> KafkaError {
        self.bootstrap.error(kind)
    }

    /// The offset of each of `partitions` at `timestamp` (-1: the end,
    /// -2: the first still stored), each asked of its leader.
    pub fn offsets(&mut self, partitions: &[i32], timestamp: i64) -> Result<Vec<i64>, KafkaError> {
        let mut offsets = vec![0; partitions.len()];
        for (node, indexes) in self.by_leader(partitions.iter().copied())? {
            let asked: Vec<i32> = indexes.iter().map(|&i| partitions[i]).collect();
            let topic = self.topic.clone();
            let answered = self.connection(node)?.offsets(&topic, &asked, timestamp)?;
            for (i, offset) in indexes.into_iter().zip(answered) {
                offsets[i] = offset;
            }
        }
        Ok(offsets)
    }

    /// Fetches from each `(partition, offset, max bytes)`, each of its
    /// leader; the leaders share `max_wait_ms`, so an idle topic on several
    /// brokers is polled as often as one on a single broker.
    pub fn fetch(
        &mut self,
        at: &[(i32, i64, i32)],
        max_wait_ms: i32,
    ) -> Result<Vec<PartitionFetch>, KafkaError> {
        let groups = self.by_leader(at.iter().map(|&(p, ..)| p))?;
        let share = i32::try_from(groups.len()).unwrap_or(i32::MAX).max(1);
        let wait_ms = (max_wait_ms / share).max(1);
        let mut fetched = Vec::with_capacity(at.len());
        for (node, indexes) in groups {
            let asked: Vec<(i32, i64, i32)> = indexes.iter().map(|&i| at[i]).collect();
            let topic = self.topic.clone();
            fetched.extend(self.connection(node)?.fetch(&topic, &asked, wait_ms)?);
        }
        Ok(fetched)
    }

    /// Indexes into `partitions`, grouped by their leader's node id.
    fn by_leader(
        &self,
        partitions: impl Iterator<Item = i32>,
    ) -> Result<BTreeMap<i32, Vec<usize>>, KafkaError> {
        let mut groups: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
        for (i, partition) in partitions.enumerate() {
            let leader = self
                .metadata
                .leaders
                .binary_search_by_key(&partition, |&(p, _)| p)
                .map(|at| self.metadata.leaders[at].1)
                .map_err(|_| self.error(KafkaErrorKind::TopicNotFound(self.topic.clone())))?;
            groups.entry(leader).or_default().push(i);
        }
        Ok(groups)
    }

    /// The connection to `node`, opened if needed.
    fn connection(&mut self, node: i32) -> Result<&mut KafkaClient, KafkaError> {
        if self.metadata.brokers.len() == 1 && self.metadata.brokers[0].node_id == node {
            return Ok(&mut self.bootstrap);
        }
        if !self.leaders.contains_key(&node) {
            let Some(broker) = self.metadata.brokers.iter().find(|b| b.node_id == node) else {
                let partition = self
                    .metadata
                    .leaders
                    .iter()
                    .find(|&&(_, leader)| leader == node)
                    .map_or(-1, |&(p, _)| p);
                return Err(self.error(KafkaErrorKind::UnknownLeader {
                    topic: self.topic.clone(),
                    partition,
                    leader: node,
                }));
            };
            let mut client = KafkaClient::connect(&broker.address, self.timeouts.0)?;
            client.set_request_timeout(self.timeouts.1)?;
            tracing::debug!(node, address = %broker.address, "connected to a partition leader");
            self.leaders.insert(node, client);
        }
        Ok(self.leaders.get_mut(&node).expect("inserted above"))
    }
}
