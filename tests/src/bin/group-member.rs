//! A plain rdkafka group consumer, nothing of fanout: joins `GROUP`, consumes `TOPIC`
//! and prints `partition offset` for every record, committing as librdkafka does by
//! default. `tests/tansu_group.rs` runs several and SIGKILLs them.
//!
//! Usage: group-member BROKERS GROUP TOPIC [librdkafka key=value ...]

use std::io::Write;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(brokers), Some(group), Some(topic)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: group-member BROKERS GROUP TOPIC [key=value ...]");
        std::process::exit(64);
    };
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest");
    for setting in args {
        let Some((key, value)) = setting.split_once('=') else {
            eprintln!("not key=value: {setting}");
            std::process::exit(64);
        };
        config.set(key, value);
    }
    let consumer: BaseConsumer = match config.create() {
        Ok(consumer) => consumer,
        Err(error) => {
            eprintln!("group-member: {error}");
            std::process::exit(1);
        }
    };
    if let Err(error) = consumer.subscribe(&[&topic]) {
        eprintln!("group-member: {error}");
        std::process::exit(1);
    }
    let mut stdout = std::io::stdout().lock();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            // The parent reads these; once it is gone, so is the point of running.
            Some(Ok(message))
                if writeln!(stdout, "{} {}", message.partition(), message.offset())
                    .and_then(|()| stdout.flush())
                    .is_err() =>
            {
                return;
            }
            Some(Ok(_)) | None => {}
            Some(Err(error)) => eprintln!("group-member: {error}"),
        }
    }
}
