//! An in-process Kafka cluster (librdkafka's mock cluster) for
//! `brokers = "embedded"`, the demo and fault-injection tests.
//!
//! It speaks the real Kafka protocol on loopback ports but keeps nothing:
//! data lives in memory (at most about 5 MiB per partition, older data is
//! dropped) and is gone when the process ends.

use std::sync::mpsc;
use std::thread;

use anyhow::{Context as _, anyhow};
use rdkafka::mocking::MockCluster;

/// librdkafka's mock cluster handle is not `Send`; a thread owns it and
/// serves requests, so the cluster can be driven from any task.
enum Command {
    CreateTopic {
        name: String,
        partitions: i32,
        replication: i32,
    },
    BrokerDown(i32),
    BrokerUp(i32),
    PartitionLeader {
        topic: String,
        partition: i32,
        broker: Option<i32>,
    },
    GroupCoordinator {
        group: String,
        broker: i32,
    },
    RefuseProduces(usize),
}

type Reply = mpsc::Sender<anyhow::Result<()>>;

/// A running embedded cluster; stops when dropped.
#[derive(Debug)]
pub struct EmbeddedCluster {
    bootstrap: String,
    commands: Option<mpsc::Sender<(Command, Reply)>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EmbeddedCluster {
    /// Starts a cluster of `brokers` brokers (ids 1..=brokers).
    pub fn start(brokers: i32) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel::<(Command, Reply)>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("sandpiper-embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(cluster) => cluster,
                    Err(error) => {
                        let _ = ready_tx
                            .send(Err(anyhow!("starting the embedded Kafka cluster: {error}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                for (command, reply) in rx {
                    let result = match command {
                        Command::CreateTopic {
                            name,
                            partitions,
                            replication,
                        } => cluster
                            .create_topic(&name, partitions, replication)
                            .with_context(|| format!("creating topic {name}")),
                        Command::BrokerDown(id) => cluster
                            .broker_down(id)
                            .with_context(|| format!("stopping broker {id}")),
                        Command::BrokerUp(id) => cluster
                            .broker_up(id)
                            .with_context(|| format!("starting broker {id}")),
                        Command::PartitionLeader {
                            topic,
                            partition,
                            broker,
                        } => cluster
                            .partition_leader(&topic, partition, broker)
                            .with_context(|| format!("setting the leader of {topic}/{partition}")),
                        Command::GroupCoordinator { group, broker } => cluster
                            .coordinator(
                                rdkafka::mocking::MockCoordinator::Group(group.clone()),
                                broker,
                            )
                            .with_context(|| format!("moving the coordinator of {group}")),
                        Command::RefuseProduces(count) => {
                            use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
                            let errors =
                                vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; count];
                            cluster.request_errors(RDKafkaApiKey::Produce, &errors);
                            Ok(())
                        }
                    };
                    let _ = reply.send(result);
                }
            })
            .context("starting the embedded Kafka thread")?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| anyhow!("the embedded Kafka thread ended while starting"))??;
        Ok(Self {
            bootstrap,
            commands: Some(tx),
            thread: Some(thread),
        })
    }

    /// `host:port,...` of the brokers.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    fn call(&self, command: Command) -> anyhow::Result<()> {
        let (reply_tx, reply_rx) = mpsc::channel();
        self.commands
            .as_ref()
            .ok_or_else(|| anyhow!("the embedded cluster is stopped"))?
            .send((command, reply_tx))
            .map_err(|_| anyhow!("the embedded Kafka thread has ended"))?;
        reply_rx
            .recv()
            .map_err(|_| anyhow!("the embedded Kafka thread has ended"))?
    }

    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication: i32,
    ) -> anyhow::Result<()> {
        self.call(Command::CreateTopic {
            name: name.to_owned(),
            partitions,
            replication,
        })
    }

    /// Takes a broker down: its connections drop and it refuses new ones.
    pub fn broker_down(&self, id: i32) -> anyhow::Result<()> {
        self.call(Command::BrokerDown(id))
    }

    pub fn broker_up(&self, id: i32) -> anyhow::Result<()> {
        self.call(Command::BrokerUp(id))
    }

    /// Moves a partition's leadership (`None`: leaderless, i.e. offline).
    pub fn partition_leader(
        &self,
        topic: &str,
        partition: i32,
        broker: Option<i32>,
    ) -> anyhow::Result<()> {
        self.call(Command::PartitionLeader {
            topic: topic.to_owned(),
            partition,
            broker,
        })
    }
}

impl EmbeddedCluster {
    /// Makes `broker` the coordinator of consumer group `group`.
    pub fn group_coordinator(&self, group: &str, broker: i32) -> anyhow::Result<()> {
        self.call(Command::GroupCoordinator {
            group: group.to_owned(),
            broker,
        })
    }
}

impl EmbeddedCluster {
    /// Answers the next `count` Produce requests, from any client, with
    /// the broker's `MESSAGE_TOO_LARGE`, as a topic with a smaller
    /// `max.message.bytes` would (the mock cluster has no topic configs).
    pub fn refuse_next_produces(&self, count: usize) -> anyhow::Result<()> {
        self.call(Command::RefuseProduces(count))
    }
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
