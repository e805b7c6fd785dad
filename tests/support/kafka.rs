//! Kafka test helpers: a mock cluster with random topics, a host started
//! from a real config, and the tally every end-to-end test ends in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sandpiper::app::App;
use sandpiper::config::Config;
use sandpiper::kafka::embedded::EmbeddedCluster;
use sandpiper::kafka::{Outgoing, tools};
use sandpiper::record::Record;

use super::tally::key_counts;
use super::{plugin, unique};

/// A mock cluster and a pipeline's worth of fresh topics.
pub struct Env {
    pub cluster: EmbeddedCluster,
    pub brokers: String,
    pub input: String,
    pub output: String,
    pub dlq: String,
    pub group: String,
}

impl Env {
    /// `brokers` brokers; every topic gets `partitions` partitions, replication 1.
    pub fn new(brokers: i32, partitions: i32) -> Self {
        let cluster = EmbeddedCluster::start(brokers).expect("mock cluster");
        let name = unique("t");
        let env = Self {
            brokers: cluster.bootstrap_servers().to_owned(),
            input: format!("{name}-in"),
            output: format!("{name}-out"),
            dlq: format!("{name}-dlq"),
            group: format!("{name}-group"),
            cluster,
        };
        for topic in [&env.input, &env.output, &env.dlq] {
            env.cluster
                .create_topic(topic, partitions, 1)
                .expect("topic");
        }
        env
    }

    /// A host config for this env running `plugin_name`; `extra` is TOML
    /// appended inside the `[[pipeline]]` table (limits, retry, ...).
    pub fn config(&self, plugin_name: &str, extra: &str) -> Config {
        let text = config_text(
            &self.brokers,
            &self.group,
            [&self.input, &self.output, &self.dlq],
            plugin_name,
            extra,
        );
        Config::parse("test config", &text).expect("test config is valid")
    }

    /// [`Env::config`] plus an admin listener on a free loopback port (no token).
    pub fn config_with_admin(&self, plugin_name: &str, extra: &str) -> Config {
        let mut config = self.config(plugin_name, extra);
        config.admin = Some(sandpiper::config::AdminConfig {
            listen: "127.0.0.1:0".into(),
            token: None,
        });
        config
    }

    /// Inputs with keys `r{i}` and the given values.
    pub fn inputs(&self, values: impl IntoIterator<Item = Vec<u8>>) -> Vec<Outgoing> {
        self.inputs_from(0, values)
    }

    /// As [`Env::inputs`], numbered from `first` (keys `r{first}`,
    /// `r{first + 1}`...): a later batch of records in the same test.
    pub fn inputs_from(
        &self,
        first: usize,
        values: impl IntoIterator<Item = Vec<u8>>,
    ) -> Vec<Outgoing> {
        values
            .into_iter()
            .zip(first..)
            .map(|(v, i)| Outgoing {
                topic: self.input.clone(),
                key: Some(format!("r{i}").into_bytes()),
                value: Some(v),
                headers: vec![("n".into(), i.to_string().into_bytes())],
                mark: None,
                timestamp: Some(1_700_000_000_000 + i as i64),
            })
            .collect()
    }

    pub async fn produce(&self, records: &[Outgoing]) {
        tools::produce_all(&self.brokers, records)
            .await
            .expect("produce inputs");
    }

    /// Reads a whole topic, to its high watermark as of the call.
    pub async fn read(&self, topic: &str) -> Vec<Record> {
        let (brokers, topic) = (self.brokers.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            tools::read_to_end(&brokers, &topic, Duration::from_secs(60))
        })
        .await
        .expect("join")
        .expect("read topic")
    }

    /// Reads `topic` to its end until `done` holds for what it holds, while
    /// the host is still producing; what it read last after `timeout`.
    pub async fn read_until(
        &self,
        topic: &str,
        timeout: Duration,
        mut done: impl FnMut(&[Record]) -> bool,
    ) -> Vec<Record> {
        let started = Instant::now();
        loop {
            let records = self.read(topic).await;
            if done(&records) || started.elapsed() >= timeout {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Committed offsets of the env's group on its input.
    pub async fn committed(&self) -> HashMap<i32, i64> {
        let (brokers, group, topic) =
            (self.brokers.clone(), self.group.clone(), self.input.clone());
        tokio::task::spawn_blocking(move || tools::committed(&brokers, &group, &topic))
            .await
            .expect("join")
            .expect("committed offsets")
            .into_iter()
            .collect()
    }
}

/// A test host config: one pipeline `test` reading `input` into `output`
/// and `dlq` with `plugin_name`, short group timeouts so a vanished member
/// is replaced quickly; `extra` is TOML inside the `[[pipeline]]` table.
pub fn config_text(
    brokers: &str,
    group: &str,
    [input, output, dlq]: [&str; 3],
    plugin_name: &str,
    extra: &str,
) -> String {
    format!(
        r#"
shutdown_timeout_secs = 10
[kafka]
brokers = "{brokers}"
group = "{group}"
[kafka.properties]
"statistics.interval.ms" = "1000"
"topic.metadata.refresh.interval.ms" = "2000"
[kafka.consumer_properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
"max.poll.interval.ms" = "20000"
"auto.commit.interval.ms" = "200"

[[pipeline]]
name = "test"
inputs = ["{input}"]
output = "{output}"
dead_letter = "{dlq}"
plugin = "{plugin}"
{extra}
"#,
        plugin = plugin(plugin_name).display(),
    )
}

/// Waits until `total` input records are committed by the app's pipeline.
pub async fn wait_committed(app: &App, total: usize, timeout: Duration) {
    let started = Instant::now();
    loop {
        let committed = app.pipelines[0].committed().await.unwrap_or_default();
        let sum: i64 = committed.iter().map(|(_, _, o)| (*o).max(0)).sum();
        if sum as usize >= total {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "only {sum} of {total} records committed after {timeout:?}: {committed:?}; health: {:?}",
            app.health.readiness().reasons
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub use super::tally::Tally;

/// The tally of `inputs` against the records read from the output and
/// dead-letter topics.
pub fn tally(inputs: &[Outgoing], outputs: &[Record], dead: &[Record]) -> Tally {
    let counts = |records: &[Record]| key_counts(records.iter().map(|r| r.key.as_deref()));
    Tally::of(
        inputs.iter().filter_map(|i| i.key.as_deref()),
        &counts(outputs),
        &counts(dead),
    )
}

pub fn header<'a>(r: &'a Record, name: &str) -> Option<&'a [u8]> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

pub fn header_str<'a>(r: &'a Record, name: &str) -> &'a str {
    header(r, name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or("")
}
