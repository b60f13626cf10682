//! Event streams end to end: an independent oracle of what every user's stream must
//! deliver, computed from the produced events alone (DESIGN.md's "Event streams"), and
//! real `/realtime` clients that subscribe to their user's events and keep every one.
//!
//! Which events a user is to see depends only on the order of each conversation's
//! events (one message-events partition each), never on how conversations interleave;
//! so the oracle gives, per user, the events of each *lane* in order: a conversation's
//! own events, the receipts of one reader in one conversation, one notification. A
//! client's stream must hold exactly those, each lane in its order, at positions
//! 1, 2, ... n with no gap and no repeat.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use fanout_schema::v1::{self, message_event::Event};
use serde_json::Value;

use crate::RealtimeClient;

/// One event a user's stream must deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// What fixes its order relative to others: `c:<conversation>`,
    /// `r:<reader>:<conversation>` or `n:<event id>`.
    pub lane: String,
    pub event: String,
    pub conversation: String,
    pub seq: u64,
    pub reader: String,
    /// The partner's data as produced; without it, the event's own fields.
    pub data: Value,
}

/// What one user has seen, remembered plainly.
#[derive(Default)]
struct Seen {
    messages: BTreeSet<(String, u64)>,
    deleted: BTreeSet<(String, u64)>,
    read: BTreeSet<(String, u64)>,
    read_through: HashMap<String, u64>,
    notifications: BTreeSet<String>,
}

impl Seen {
    fn is_read(&self, conversation: &str, seq: u64) -> bool {
        seq <= self.read_through.get(conversation).copied().unwrap_or(0)
            || self.read.contains(&(conversation.to_owned(), seq))
            || self.deleted.contains(&(conversation.to_owned(), seq))
    }
}

fn data_of(event: &v1::MessageEvent) -> Value {
    event
        .data
        .as_ref()
        .map(|data| serde_json::from_str(&fanout_schema::data::render_data(data).unwrap()).unwrap())
        .unwrap_or(Value::Null)
}

/// The data of an event that carried none: its own fields, where it has them.
fn own_fields(conversation: &str, seq: u64, message_id: &str, sender: &str, reader: &str) -> Value {
    let mut fields = serde_json::Map::new();
    for (name, value) in [
        ("conversation_id", conversation),
        ("message_id", message_id),
        ("sender", sender),
        ("reader", reader),
    ] {
        if !value.is_empty() {
            fields.insert(name.to_owned(), value.into());
        }
    }
    if seq > 0 {
        fields.insert("seq".to_owned(), seq.into());
    }
    Value::Object(fields)
}

/// The partner's data, or else the event's own fields.
fn or_own(data: &Value, own: impl FnOnce() -> Value) -> Value {
    if data.is_null() { own() } else { data.clone() }
}

fn distinct(users: &[String]) -> Vec<&String> {
    let mut seen = BTreeSet::new();
    users.iter().filter(|user| seen.insert(*user)).collect()
}

/// Per `partner/user`, every event its stream must deliver, each lane in order. `events`
/// must list each conversation's events in the order they were consumed (for example
/// message-events read back partition by partition).
pub fn stream_oracle(events: &[v1::MessageEvent]) -> BTreeMap<String, Vec<Expected>> {
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut expected: BTreeMap<String, Vec<Expected>> = BTreeMap::new();
    for event in events {
        let partner = &event.partner;
        let key = |user: &str| format!("{partner}/{user}");
        let data = data_of(event);
        let message =
            |name: &str, conversation: &str, seq: u64, message_id: &str, sender: &str| Expected {
                lane: format!("c:{conversation}"),
                event: name.to_owned(),
                conversation: conversation.to_owned(),
                seq,
                reader: String::new(),
                data: if data.is_null() {
                    own_fields(conversation, seq, message_id, sender, "")
                } else {
                    data.clone()
                },
            };
        let mut deliver = |user: &str, item: Expected| {
            expected.entry(key(user)).or_default().push(item);
        };
        match event.event.as_ref().unwrap() {
            Event::MessageCreated(e) => {
                let mut users = vec![&e.sender];
                users.extend(
                    distinct(&e.recipients)
                        .into_iter()
                        .filter(|r| **r != e.sender),
                );
                for user in users {
                    let state = seen.entry(key(user)).or_default();
                    let id = (e.conversation_id.clone(), e.seq);
                    let first = state.messages.insert(id.clone());
                    if first && !state.deleted.contains(&id) {
                        deliver(
                            user,
                            message(
                                "message.created",
                                &e.conversation_id,
                                e.seq,
                                &e.message_id,
                                &e.sender,
                            ),
                        );
                    }
                }
            }
            Event::MessageDeleted(e) => {
                for user in distinct(&e.recipients) {
                    let state = seen.entry(key(user)).or_default();
                    if state.deleted.insert((e.conversation_id.clone(), e.seq)) {
                        deliver(
                            user,
                            message(
                                "message.deleted",
                                &e.conversation_id,
                                e.seq,
                                &e.message_id,
                                "",
                            ),
                        );
                    }
                }
            }
            Event::MessageRead(e) => {
                let state = seen.entry(key(&e.user)).or_default();
                let reads_something = !state.is_read(&e.conversation_id, e.seq);
                state.read.insert((e.conversation_id.clone(), e.seq));
                if reads_something {
                    read_delivered(
                        &mut deliver,
                        "message.read",
                        &e.conversation_id,
                        e.seq,
                        &e.user,
                        &e.notify,
                        &or_own(&data, || {
                            own_fields(&e.conversation_id, e.seq, &e.message_id, "", &e.user)
                        }),
                    );
                }
            }
            Event::ConversationRead(e) => {
                let state = seen.entry(key(&e.user)).or_default();
                let reads_something = (1..=e.seq).any(|k| !state.is_read(&e.conversation_id, k));
                let mark = state
                    .read_through
                    .entry(e.conversation_id.clone())
                    .or_insert(0);
                *mark = (*mark).max(e.seq);
                if reads_something {
                    read_delivered(
                        &mut deliver,
                        "conversation.read",
                        &e.conversation_id,
                        e.seq,
                        &e.user,
                        &e.notify,
                        &or_own(&data, || {
                            own_fields(&e.conversation_id, e.seq, "", "", &e.user)
                        }),
                    );
                }
            }
            Event::Notification(n) => {
                for user in distinct(&n.recipients) {
                    let state = seen.entry(key(user)).or_default();
                    if state.notifications.insert(event.event_id.clone()) {
                        deliver(
                            user,
                            Expected {
                                lane: format!("n:{}", event.event_id),
                                event: n.event.clone(),
                                conversation: String::new(),
                                seq: 0,
                                reader: String::new(),
                                data: data.clone(),
                            },
                        );
                    }
                }
            }
        }
    }
    expected
}

/// A delivered read: to the reader's own stream, and as a receipt to each notify user.
#[allow(clippy::too_many_arguments)]
fn read_delivered(
    deliver: &mut impl FnMut(&str, Expected),
    name: &str,
    conversation: &str,
    seq: u64,
    reader: &str,
    notify: &[String],
    data: &Value,
) {
    let item = |lane: String| Expected {
        lane,
        event: name.to_owned(),
        conversation: conversation.to_owned(),
        seq,
        reader: reader.to_owned(),
        data: data.clone(),
    };
    deliver(reader, item(format!("c:{conversation}")));
    for notified in distinct(notify) {
        if notified != reader {
            deliver(notified, item(format!("r:{reader}:{conversation}")));
        }
    }
}

/// A notification whose data names its event id, so a client's copy can be matched to
/// the produced one.
pub fn notification(partner: &str, id: &str, name: &str, recipients: &[&str]) -> v1::MessageEvent {
    let event = v1::MessageEvent {
        event_id: id.to_owned(),
        partner: partner.to_owned(),
        occurred_at_ms: fanout_schema::unix_millis(),
        data: None,
        event: Some(Event::Notification(v1::Notification {
            event: name.to_owned(),
            recipients: recipients.iter().map(|user| (*user).to_owned()).collect(),
        })),
    };
    crate::event::with_data(event, &serde_json::json!({ "id": id }))
}

/// One `event` push as a client received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub epoch: String,
    pub offset: u64,
    pub item: Expected,
    pub unread_count: Option<u64>,
}

impl Received {
    /// Reads an `event` push; `None` for any other frame.
    pub fn parse(frame: &str) -> Option<Self> {
        let value: Value = serde_json::from_str(frame).ok()?;
        if value["type"] != "event" {
            return None;
        }
        let text = |name: &str| value[name].as_str().unwrap_or_default().to_owned();
        let event = text("event");
        let conversation = text("conversation_id");
        let reader = text("reader");
        let lane = if event.starts_with("message.") || event.starts_with("conversation.") {
            if reader.is_empty() || event.ends_with(".created") || event.ends_with(".deleted") {
                format!("c:{conversation}")
            } else {
                // Resolved by the caller: the reader's own read is in its conversation's
                // lane, a receipt in the reader's.
                format!("r:{reader}:{conversation}")
            }
        } else {
            String::new()
        };
        Some(Self {
            epoch: text("epoch"),
            offset: value["offset"].as_u64()?,
            unread_count: value["unread_count"].as_u64(),
            item: Expected {
                lane,
                event,
                conversation,
                seq: value["seq"].as_u64().unwrap_or(0),
                reader,
                data: value["data"].clone(),
            },
        })
    }
}

/// A `/realtime` client subscribed to one user's events, keeping every push; one that
/// reconnects (see [`Watcher::start_reconnecting`]) keeps them across its connections.
pub struct Watcher {
    pub key: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Connections resumed from the last position received.
    pub resumes: Arc<std::sync::atomic::AtomicUsize>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Connects, authenticates with `token` and subscribes to the user's events, from
/// `since` (the epoch and offset of the last event received) if given, which must be
/// resumed; returns the client once subscribed.
async fn subscribe(
    address: SocketAddr,
    partner: &str,
    token: &str,
    since: Option<(&str, u64)>,
) -> RealtimeClient {
    let mut client = RealtimeClient::connect(address).await;
    let reply = client.authenticate(partner, token, "1").await;
    assert!(reply.contains(r#""success":true"#), "{reply}");
    let request = match since {
        None => serde_json::json!({"type": "subscribe_events", "id": "events"}),
        Some((epoch, offset)) => serde_json::json!({"type": "subscribe_events", "id": "events",
            "since": {"epoch": epoch, "offset": offset}}),
    };
    client.send_text(&request.to_string()).await;
    loop {
        let frame = client.next_text().await;
        if frame.contains(r#""type":"subscribed""#) {
            if since.is_some() {
                assert!(
                    frame.contains(r#""recovery":"resumed""#),
                    "not resumed from {since:?}: {frame}"
                );
            }
            return client;
        }
        assert!(
            !frame.contains(r#""type":"event""#),
            "an event before {frame}"
        );
    }
}

/// Keeps every event `client` pushes until its connection ends, or until `until`
/// passes once it has a position to resume from, an event (then the client drops the
/// connection, without a close frame, as a network that goes away does). True when it
/// was dropped.
async fn keep(
    client: &mut RealtimeClient,
    received: &Mutex<Vec<Received>>,
    until: Option<tokio::time::Instant>,
) -> bool {
    loop {
        let has_position = !received.lock().unwrap().is_empty();
        let frame = match until.filter(|_| has_position) {
            None => client.next_forever().await,
            Some(until) => tokio::select! {
                frame = client.next_forever() => frame,
                () = tokio::time::sleep_until(until) => return true,
            },
        };
        let Some(frame) = frame else {
            return false;
        };
        assert!(!frame.contains("events_ended"), "stream ended: {frame}");
        if let Some(event) = Received::parse(&frame) {
            received.lock().unwrap().push(event);
        }
    }
}

impl Watcher {
    /// Connects, authenticates as `user` of `partner` with `token`, subscribes to its
    /// events and keeps every push until aborted.
    pub async fn start(address: SocketAddr, partner: &str, user: &str, token: &str) -> Self {
        let mut client = subscribe(address, partner, token, None).await;
        let received = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let received = received.clone();
            tokio::spawn(async move {
                keep(&mut client, &received, None).await;
            })
        };
        Self {
            key: format!("{partner}/{user}"),
            received,
            resumes: Arc::default(),
            task,
        }
    }

    /// As [`Watcher::start`], but while `reconnecting` is set the client drops its
    /// connection at random moments (after 0.2 to 2 s connected, once it has had an
    /// event: before, it has no position to resume from), waits up to 0.5 s, connects
    /// again with a fresh token and resumes from the last event it received: its
    /// stream goes on without a gap or a repeat.
    pub async fn start_reconnecting(
        address: SocketAddr,
        partner: &crate::TestPartner,
        user: &str,
        seed: u64,
        reconnecting: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        use rand::{Rng, SeedableRng};
        use std::sync::atomic::Ordering;
        let received = Arc::new(Mutex::new(Vec::<Received>::new()));
        let resumes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut client = subscribe(address, &partner.code, &partner.token(user), None).await;
        let task = {
            let (received, resumes) = (received.clone(), resumes.clone());
            let (partner, user) = (partner.clone(), user.to_owned());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                loop {
                    let until = reconnecting.load(Ordering::SeqCst).then(|| {
                        tokio::time::Instant::now()
                            + std::time::Duration::from_millis(rng.random_range(200..2000))
                    });
                    if !keep(&mut client, &received, until).await {
                        return;
                    }
                    drop(client);
                    let pause = rng.random_range(0..500);
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                    let last = received
                        .lock()
                        .unwrap()
                        .last()
                        .map(|event| (event.epoch.clone(), event.offset));
                    let since = last
                        .as_ref()
                        .map(|(epoch, offset)| (epoch.as_str(), *offset));
                    client = subscribe(address, &partner.code, &partner.token(&user), since).await;
                    if since.is_some() {
                        resumes.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        };
        Self {
            key: format!("{}/{user}", partner.code),
            received,
            resumes,
            task,
        }
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

/// Checks a client's stream against the oracle's events for its user: positions 1..n in
/// one epoch, no gap, no repeat, and exactly the expected events of each lane, in order.
/// `Err` says what differs.
pub fn check_stream(
    received: &[Received],
    expected: &[Expected],
    user: &str,
) -> Result<(), String> {
    let offsets: Vec<u64> = received.iter().map(|event| event.offset).collect();
    let want: Vec<u64> = (1..=received.len() as u64).collect();
    if offsets != want {
        let first_bad = offsets.iter().zip(&want).position(|(a, b)| a != b);
        return Err(format!(
            "positions are not 1..{}: first difference at index {first_bad:?} ({:?})",
            received.len(),
            first_bad.map(|i| &offsets[i.saturating_sub(2)..(i + 3).min(offsets.len())])
        ));
    }
    let epochs: BTreeSet<&str> = received.iter().map(|event| event.epoch.as_str()).collect();
    if epochs.len() > 1 {
        return Err(format!("more than one epoch: {epochs:?}"));
    }
    let lanes = |items: Vec<Expected>| {
        let mut lanes: BTreeMap<String, Vec<Expected>> = BTreeMap::new();
        for item in items {
            lanes.entry(item.lane.clone()).or_default().push(item);
        }
        lanes
    };
    let got = lanes(
        received
            .iter()
            .map(|event| {
                let mut item = event.item.clone();
                if item.lane.is_empty() {
                    // A notification: the tests' notifications carry their event id in
                    // their data (see `notification`).
                    item.lane = format!("n:{}", item.data["id"].as_str().unwrap_or("?"));
                } else if !item.reader.is_empty() && item.reader == user {
                    item.lane = format!("c:{}", item.conversation);
                }
                item
            })
            .collect(),
    );
    let want = lanes(expected.to_vec());
    if got == want {
        return Ok(());
    }
    let mut differences = Vec::new();
    for lane in got.keys().chain(want.keys()).collect::<BTreeSet<_>>() {
        let (got_items, want_items) = (
            got.get(lane).cloned().unwrap_or_default(),
            want.get(lane).cloned().unwrap_or_default(),
        );
        if got_items != want_items {
            let at = got_items
                .iter()
                .zip(&want_items)
                .position(|(a, b)| a != b)
                .unwrap_or(got_items.len().min(want_items.len()));
            differences.push(format!(
                "lane {lane}: {} received, {} expected; first difference at {at}:\n  got  {:?}\n  want {:?}",
                got_items.len(),
                want_items.len(),
                got_items.get(at),
                want_items.get(at),
            ));
        }
        if differences.len() >= 5 {
            break;
        }
    }
    Err(differences.join("\n"))
}

/// Every message event on `config`'s message-events topic, partition by partition in
/// offset order: each conversation's events in the order ingest consumed them.
pub fn produced_events(config: &fanout_app::config::Config) -> Vec<v1::MessageEvent> {
    use prost::Message as _;
    let mut records = crate::scenarios::all_records(config, &config.topics.message_events);
    records.sort_by_key(|record| (record.partition, record.offset));
    records
        .iter()
        .map(|record| v1::MessageEvent::decode(record.value.as_slice()).unwrap())
        .collect()
}

/// Watchers for every user of `users` under every partner of `partners`.
pub async fn watch_users(
    address: SocketAddr,
    partners: &[crate::TestPartner],
    users: &[String],
) -> Vec<Watcher> {
    let mut watchers = Vec::new();
    for partner in partners {
        for user in users {
            watchers.push(Watcher::start(address, &partner.code, user, &partner.token(user)).await);
        }
    }
    watchers
}

/// Waits until every watcher holds as many events as the oracle expects for its user,
/// then checks each stream exactly; fails naming each user whose stream differs.
pub async fn assert_streams(
    watchers: &[Watcher],
    expected: &BTreeMap<String, Vec<Expected>>,
    context: &str,
) {
    let none = Vec::new();
    let want = |watcher: &Watcher| expected.get(&watcher.key).unwrap_or(&none);
    let deadline = tokio::time::Instant::now() + crate::DEADLINE * 3;
    while tokio::time::Instant::now() < deadline
        && watchers
            .iter()
            .any(|watcher| watcher.count() < want(watcher).len())
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A moment more, so a stream that got too much shows it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut failures = Vec::new();
    for watcher in watchers {
        let received = watcher.received.lock().unwrap().clone();
        let user = watcher.key.split('/').nth(1).unwrap_or_default();
        if let Err(difference) = check_stream(&received, want(watcher), user) {
            failures.push(format!(
                "{}: received {}, expected {}:\n{difference}",
                watcher.key,
                received.len(),
                want(watcher).len()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "streams differ from the oracle ({context}):\n{}",
        failures.join("\n\n")
    );
    let delivered: usize = watchers.iter().map(Watcher::count).sum();
    assert!(delivered > 0, "no event was delivered at all ({context})");
}
