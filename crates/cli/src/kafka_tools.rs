//! Console tools for any Kafka-protocol broker (`ember broker` included), in the
//! spirit of kafka-topics and the console producer and consumer.
//!
//! Produce, consume, list, describe and delete go through rskafka, a Rust Kafka
//! client; `topics create` sends one CreateTopics request encoded by the
//! kafka-protocol crate, because it carries topic settings (`--config`), which
//! rskafka's call does not.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rskafka::client::Client;
use rskafka::client::partition::{Compression, OffsetAt, UnknownTopicHandling};
use rskafka::record::Record;

#[derive(Debug, clap::Args)]
pub struct Bootstrap {
    /// A broker to start from, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:9092", value_name = "HOST:PORT")]
    bootstrap_server: String,
}

#[derive(Debug, clap::Args)]
pub struct TopicsArgs {
    #[command(flatten)]
    bootstrap: Bootstrap,
    #[command(subcommand)]
    command: TopicsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TopicsCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// A topic setting, e.g. retention.ms=60000 (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = crate::sql::parse_config_arg)]
        config: Vec<(String, String)>,
    },
    /// List the topics.
    List,
    /// Partitions and offsets of one topic, or of every topic.
    Describe { name: Option<String> },
    /// Delete a topic and its data.
    Delete { name: String },
}

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    bootstrap: Bootstrap,
    #[arg(long)]
    topic: String,
    /// Split each line into key and value at the first SEP (default: no key).
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// Send every record to this partition (default: by key as the Java client
    /// does, round robin without a key).
    #[arg(long)]
    partition: Option<i32>,
}

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    bootstrap: Bootstrap,
    #[arg(long)]
    topic: String,
    /// Only this partition (default: all).
    #[arg(long)]
    partition: Option<i32>,
    /// Start at the oldest record (default: only new records).
    #[arg(long)]
    from_beginning: bool,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    max_messages: Option<usize>,
    /// Stop once every partition has been read to its end.
    #[arg(long)]
    exit_at_end: bool,
    /// Print `key<SEP>value` (with --key-separator, default tab) instead of the value.
    #[arg(long)]
    print_key: bool,
    #[arg(long, default_value = "\t", value_name = "SEP")]
    key_separator: String,
}

async fn client(b: &Bootstrap) -> Result<Client> {
    ember_exec::kafka_scan::client_builder(vec![b.bootstrap_server.clone()])
        .build()
        .await
        .with_context(|| format!("connecting to {}", b.bootstrap_server))
}

async fn partitions_of(client: &Client, topic: &str) -> Result<Vec<i32>> {
    let topics = client.list_topics().await?;
    let t = topics
        .into_iter()
        .find(|t| t.name == topic)
        .with_context(|| format!("topic '{topic}' does not exist"))?;
    Ok(t.partitions.into_iter().collect())
}

pub async fn topics(args: TopicsArgs) -> Result<()> {
    match args.command {
        TopicsCommand::Create {
            name,
            partitions,
            config,
        } => {
            create_topic(&args.bootstrap.bootstrap_server, &name, partitions, &config).await?;
            eprintln!("created topic {name} with {partitions} partition(s)");
        }
        TopicsCommand::List => {
            let client = client(&args.bootstrap).await?;
            let mut names: Vec<String> = client
                .list_topics()
                .await?
                .into_iter()
                .map(|t| t.name)
                .collect();
            names.sort();
            for n in names {
                println!("{n}");
            }
        }
        TopicsCommand::Describe { name } => {
            let client = client(&args.bootstrap).await?;
            let mut topics = client.list_topics().await?;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            if let Some(n) = &name
                && !topics.iter().any(|t| &t.name == n)
            {
                bail!("topic '{n}' does not exist");
            }
            for t in topics
                .iter()
                .filter(|t| name.as_ref().is_none_or(|n| &t.name == n))
            {
                println!("topic {}\tpartitions {}", t.name, t.partitions.len());
                for p in &t.partitions {
                    let pc = client
                        .partition_client(t.name.clone(), *p, UnknownTopicHandling::Error)
                        .await?;
                    let start = pc.get_offset(OffsetAt::Earliest).await?;
                    let end = pc.get_offset(OffsetAt::Latest).await?;
                    println!(
                        "  partition {p}\tstart {start}\tend {end}\trecords {}",
                        end - start
                    );
                }
            }
        }
        TopicsCommand::Delete { name } => {
            let client = client(&args.bootstrap).await?;
            client
                .controller_client()?
                .delete_topic(name.clone(), 10_000)
                .await
                .with_context(|| format!("deleting topic '{name}'"))?;
            eprintln!("deleted topic {name}");
        }
    }
    Ok(())
}

/// One CreateTopics request (v2), with the topic's settings.
async fn create_topic(
    server: &str,
    name: &str,
    partitions: i32,
    config: &[(String, String)],
) -> Result<()> {
    let version = 2;
    let mut frame = BytesMut::new();
    frame.extend_from_slice(&[0; 4]);
    RequestHeader::default()
        .with_request_api_key(ApiKey::CreateTopics as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("ember-topics")))
        .encode(
            &mut frame,
            ApiKey::CreateTopics.request_header_version(version),
        )?;
    CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(name.to_string())))
                .with_num_partitions(partitions)
                .with_replication_factor(1)
                .with_configs(
                    config
                        .iter()
                        .map(|(k, v)| {
                            CreatableTopicConfig::default()
                                .with_name(StrBytes::from_string(k.clone()))
                                .with_value(Some(StrBytes::from_string(v.clone())))
                        })
                        .collect(),
                ),
        ])
        .encode(&mut frame, version)?;
    let len = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    let server = server.to_string();
    let response = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
        let mut conn = std::net::TcpStream::connect(&server)
            .with_context(|| format!("connecting to {server}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        conn.write_all(&frame)?;
        let mut len = [0u8; 4];
        conn.read_exact(&mut len)?;
        let mut body = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
        conn.read_exact(&mut body)?;
        Ok(body)
    })
    .await??;
    let mut body = bytes::Bytes::from(response);
    ResponseHeader::decode(
        &mut body,
        ApiKey::CreateTopics.response_header_version(version),
    )?;
    let response = CreateTopicsResponse::decode(&mut body, version)?;
    for t in response.topics {
        if t.error_code != 0 {
            let message = t.error_message.map(|m| m.to_string()).unwrap_or_default();
            bail!(
                "creating topic '{name}' failed: error {} {message}",
                t.error_code
            );
        }
    }
    Ok(())
}

pub async fn produce(args: ProduceArgs) -> Result<()> {
    let client = client(&args.bootstrap).await?;
    let partitions = partitions_of(&client, &args.topic).await?;
    let count = partitions.len() as u32;
    let mut clients = BTreeMap::new();
    for p in &partitions {
        clients.insert(
            *p,
            client
                .partition_client(args.topic.clone(), *p, UnknownTopicHandling::Retry)
                .await?,
        );
    }
    let mut pending: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
    let mut sent = 0usize;
    let mut next = 0u32;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        let line = lines.next().transpose().context("reading stdin")?;
        let done = line.is_none();
        if let Some(line) = line {
            let (key, value) = match &args.key_separator {
                Some(sep) => match line.split_once(sep.as_str()) {
                    Some((k, v)) => (Some(k.as_bytes().to_vec()), v.as_bytes().to_vec()),
                    None => (None, line.as_bytes().to_vec()),
                },
                None => (None, line.as_bytes().to_vec()),
            };
            let partition = match (args.partition, &key) {
                (Some(p), _) => p,
                (None, Some(k)) => ember_log::partition_for_key(k, count) as i32,
                (None, None) => {
                    next = next.wrapping_add(1);
                    partitions[(next % count) as usize]
                }
            };
            pending.entry(partition).or_default().push(Record {
                key,
                value: Some(value),
                headers: BTreeMap::new(),
                timestamp: chrono::Utc::now(),
            });
        }
        let full = pending.values().map(Vec::len).sum::<usize>() >= 1000;
        if full || done {
            for (p, records) in std::mem::take(&mut pending) {
                let pc = clients
                    .get(&p)
                    .with_context(|| format!("topic '{}' has no partition {p}", args.topic))?;
                sent += records.len();
                pc.produce(records, Compression::NoCompression)
                    .await
                    .with_context(|| format!("producing to {}-{p}", args.topic))?;
            }
        }
        if done {
            break;
        }
    }
    eprintln!("produced {sent} record(s) to {}", args.topic);
    Ok(())
}

pub async fn consume(args: ConsumeArgs) -> Result<()> {
    let client = client(&args.bootstrap).await?;
    let partitions = match args.partition {
        Some(p) => vec![p],
        None => partitions_of(&client, &args.topic).await?,
    };
    let mut readers = vec![];
    for p in partitions {
        let pc = client
            .partition_client(args.topic.clone(), p, UnknownTopicHandling::Error)
            .await?;
        let start = if args.from_beginning {
            pc.get_offset(OffsetAt::Earliest).await?
        } else {
            pc.get_offset(OffsetAt::Latest).await?
        };
        readers.push((pc, start, false));
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0usize;
    loop {
        for (pc, offset, at_end) in readers.iter_mut() {
            let (records, high_watermark) = pc
                .fetch_records(*offset, 1..(1 << 20), 200)
                .await
                .with_context(|| format!("fetching {}-{}", args.topic, pc.partition()))?;
            for r in records {
                if r.offset < *offset {
                    continue;
                }
                *offset = r.offset + 1;
                let value = r.record.value.unwrap_or_default();
                if args.print_key {
                    out.write_all(&r.record.key.unwrap_or_default())?;
                    out.write_all(args.key_separator.as_bytes())?;
                }
                out.write_all(&value)?;
                out.write_all(b"\n")?;
                printed += 1;
                if args.max_messages.is_some_and(|m| printed >= m) {
                    out.flush()?;
                    return Ok(());
                }
            }
            *at_end = *offset >= high_watermark;
        }
        out.flush()?;
        if args.exit_at_end && readers.iter().all(|(_, _, end)| *end) {
            return Ok(());
        }
    }
}
