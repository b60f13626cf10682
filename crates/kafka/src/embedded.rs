//! An in-process Kafka: librdkafka's mock cluster, which speaks the real Kafka protocol
//! on loopback TCP ports, so any Kafka client (including kcat) can use it.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedKafkaError {
    #[error("could not start the embedded Kafka: {0}")]
    Start(String),
    #[error("could not create topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("the embedded Kafka thread is gone")]
    Gone,
}

type Command =
    Box<dyn FnOnce(&MockCluster<'static, rdkafka::producer::DefaultProducerContext>) + Send>;

/// A running mock cluster. `MockCluster` is not `Send`, so it lives on a thread of its
/// own and is reached through commands; dropping this stops the cluster.
/// librdkafka settings for clients of the embedded cluster. The mock cluster answers an
/// empty fetch only after `fetch.wait.max.ms` (default 500 ms) even if records arrive
/// meanwhile, where a real broker answers as soon as they do; left at the default,
/// every consumer hop would add up to half a second that a real deployment does not
/// have. Nagle's algorithm off, as for any latency-bound client.
pub const EMBEDDED_CLIENT_SETTINGS: [(&str, &str); 2] =
    [("fetch.wait.max.ms", "5"), ("socket.nagle.disable", "true")];

pub struct EmbeddedKafka {
    bootstrap_servers: String,
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedKafka {
    /// Starts a cluster of `broker_count` brokers and creates `topics` (name, partitions).
    pub fn start(broker_count: i32, topics: &[(String, i32)]) -> Result<Self, EmbeddedKafkaError> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, EmbeddedKafkaError>>();
        let (commands_tx, commands_rx) = mpsc::channel::<Command>();
        let topics = topics.to_vec();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".to_owned())
            .spawn(move || {
                let cluster = match MockCluster::new(broker_count) {
                    Ok(cluster) => cluster,
                    Err(error) => {
                        let _ = ready_tx.send(Err(EmbeddedKafkaError::Start(error.to_string())));
                        return;
                    }
                };
                for (topic, partitions) in &topics {
                    let replication = broker_count.min(3);
                    if let Err(error) = cluster.create_topic(topic, *partitions, replication) {
                        let _ = ready_tx.send(Err(EmbeddedKafkaError::CreateTopic {
                            topic: topic.clone(),
                            reason: error.to_string(),
                        }));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Runs until every sender is dropped.
                while let Ok(command) = commands_rx.recv() {
                    command(&cluster);
                }
            })
            .map_err(|error| EmbeddedKafkaError::Start(error.to_string()))?;
        let bootstrap_servers = ready_rx.recv().map_err(|_| EmbeddedKafkaError::Gone)??;
        Ok(Self {
            bootstrap_servers,
            commands: Some(commands_tx),
            thread: Some(thread),
        })
    }

    /// The `host:port,...` list clients connect to.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// Creates one more topic.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), EmbeddedKafkaError> {
        let topic_name = topic.to_owned();
        self.with_cluster(move |cluster| {
            cluster
                .create_topic(&topic_name, partitions, 1)
                .map_err(|error| EmbeddedKafkaError::CreateTopic {
                    topic: topic_name.clone(),
                    reason: error.to_string(),
                })
        })?
    }

    /// Runs `f` on the cluster's thread (for fault injection: brokers down/up, request
    /// errors, latency) and returns its result.
    pub fn with_cluster<T: Send + 'static>(
        &self,
        f: impl FnOnce(&MockCluster<'static, rdkafka::producer::DefaultProducerContext>) -> T
        + Send
        + 'static,
    ) -> Result<T, EmbeddedKafkaError> {
        let (result_tx, result_rx) = mpsc::channel();
        let commands = self.commands.as_ref().ok_or(EmbeddedKafkaError::Gone)?;
        commands
            .send(Box::new(move |cluster| {
                let _ = result_tx.send(f(cluster));
            }))
            .map_err(|_| EmbeddedKafkaError::Gone)?;
        result_rx.recv().map_err(|_| EmbeddedKafkaError::Gone)
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
