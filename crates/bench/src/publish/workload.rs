//! What the publish scenario sends, and what it expects back, worked out from what the
//! api accepted and the documented meaning of the events alone (no fanout code).
//!
//! Each publishing connection owns its conversations, each between two users of a
//! pool (a sender and a reader); it goes round them, and in each sends a message
//! (`MessageCreated`, the next seq) and then its read by the reader: in every other
//! conversation a `MessageRead` of that seq, in the others a `ConversationRead` up to
//! it, either naming the sender in `notify` (the sender gets the read receipt on its
//! stream). Half the events are messages, half reads. Where messages are read one by
//! one, every read shows in the answers (a read lost on the way leaves its message
//! unread and without a reader); a `ConversationRead` covers the reads before it.
//!
//! From the events the api accepted it follows, per the README and docs/streams.md:
//! - the reader's unread count: the messages of its conversations not read, where a
//!   `ConversationRead` reads every seq up to its own and a `MessageRead` its seq only;
//! - a message's readers (`GET .../receipts`): the reader, if it read the message,
//!   `via` `conversation_read` if a `ConversationRead` covers it, else `message_read`;
//!   nobody otherwise.

use std::collections::{BTreeSet, HashMap};

use rand::Rng as _;
use rand::rngs::StdRng;

/// The users and partner of a run.
#[derive(Debug, Clone)]
pub(super) struct Workload {
    pub(super) partner: String,
    /// Every id of the run starts with it (fresh per run).
    pub(super) prefix: String,
    /// Users `{prefix}u0` .. `{prefix}u{users - 1}`.
    pub(super) users: u64,
}

impl Workload {
    pub(super) fn user(&self, index: u64) -> String {
        format!("{}u{index}", self.prefix)
    }
}

/// One event of a body, as planned: what to note if the api accepts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Planned {
    Created { conversation: usize, seq: u64 },
    MessageRead { conversation: usize, seq: u64 },
    ConversationRead { conversation: usize, seq: u64 },
}

/// One conversation of a connection, and what the api accepted of it.
#[derive(Debug, Clone)]
pub(super) struct Conversation {
    pub(super) id: String,
    pub(super) sender: String,
    pub(super) reader: String,
    /// The last seq sent, and whether its read was sent.
    last_seq: u64,
    last_read_sent: bool,
    /// Its messages are read one by one (`MessageRead`), else up to each
    /// (`ConversationRead`).
    one_by_one: bool,
    /// Accepted: the messages' seqs, the seqs read one by one, and the highest
    /// `ConversationRead`.
    pub(super) created: Vec<u64>,
    pub(super) message_reads: BTreeSet<u64>,
    pub(super) mark: u64,
}

impl Conversation {
    /// Whether the reader has read `seq`, and how (`conversation_read` or
    /// `message_read`, as the api spells it).
    pub(super) fn read_of(&self, seq: u64) -> Option<&'static str> {
        if seq <= self.mark {
            Some("conversation_read")
        } else if self.message_reads.contains(&seq) {
            Some("message_read")
        } else {
            None
        }
    }

    /// Messages the reader has not read.
    pub(super) fn unread(&self) -> u64 {
        self.created
            .iter()
            .filter(|seq| self.read_of(**seq).is_none())
            .count() as u64
    }
}

/// One connection's events: its own conversations, gone round in turn.
pub(super) struct Generator {
    partner: String,
    /// Event ids are `{label}-{serial}`.
    label: String,
    serial: u64,
    pub(super) conversations: Vec<Conversation>,
    next: usize,
}

impl Generator {
    /// `count` conversations named after `label`, each between two distinct users of
    /// the pool drawn by `rng`.
    pub(super) fn new(workload: &Workload, label: &str, count: usize, rng: &mut StdRng) -> Self {
        let conversations = (0..count.max(1))
            .map(|index| {
                let sender = rng.random_range(0..workload.users);
                let mut reader = rng.random_range(0..workload.users);
                if reader == sender {
                    reader = (reader + 1) % workload.users;
                }
                Conversation {
                    id: format!("{}{label}-c{index}", workload.prefix),
                    sender: workload.user(sender),
                    reader: workload.user(reader),
                    last_seq: 0,
                    last_read_sent: true,
                    one_by_one: index % 2 == 0,
                    created: Vec::new(),
                    message_reads: BTreeSet::new(),
                    mark: 0,
                }
            })
            .collect();
        Self {
            partner: workload.partner.clone(),
            label: format!("{}{label}", workload.prefix),
            serial: 0,
            conversations,
            next: 0,
        }
    }

    /// Appends the next event to `body` as JSON (the proto3 JSON mapping, as a
    /// partner's service would write it) and says what it is, and its event id.
    pub(super) fn next_event(
        &mut self,
        body: &mut String,
        occurred_at_ms: i64,
    ) -> (Planned, String) {
        let index = self.next;
        self.next = (self.next + 1) % self.conversations.len();
        self.serial += 1;
        let conversation = &mut self.conversations[index];
        let event_id = format!("{}-{}", self.label, self.serial);
        let (planned, event) = if conversation.last_read_sent {
            conversation.last_seq += 1;
            conversation.last_read_sent = false;
            let seq = conversation.last_seq;
            (
                Planned::Created {
                    conversation: index,
                    seq,
                },
                format!(
                    r#""messageCreated":{{"conversationId":"{}","seq":"{seq}","messageId":"m{seq}","sender":"{}","recipients":["{}"]}}"#,
                    conversation.id, conversation.sender, conversation.reader
                ),
            )
        } else {
            conversation.last_read_sent = true;
            let seq = conversation.last_seq;
            if conversation.one_by_one {
                (
                    Planned::MessageRead {
                        conversation: index,
                        seq,
                    },
                    format!(
                        r#""messageRead":{{"conversationId":"{}","seq":"{seq}","user":"{}","messageId":"m{seq}","notify":["{}"]}}"#,
                        conversation.id, conversation.reader, conversation.sender
                    ),
                )
            } else {
                (
                    Planned::ConversationRead {
                        conversation: index,
                        seq,
                    },
                    format!(
                        r#""conversationRead":{{"conversationId":"{}","seq":"{seq}","user":"{}","notify":["{}"]}}"#,
                        conversation.id, conversation.reader, conversation.sender
                    ),
                )
            }
        };
        body.push_str(&format!(
            r#"{{"eventId":"{event_id}","partner":"{}","occurredAtMs":"{occurred_at_ms}",{event}}}"#,
            self.partner
        ));
        (planned, event_id)
    }

    /// Notes an event the api accepted.
    pub(super) fn accepted(&mut self, planned: Planned) {
        match planned {
            Planned::Created { conversation, seq } => {
                self.conversations[conversation].created.push(seq);
            }
            Planned::MessageRead { conversation, seq } => {
                self.conversations[conversation].message_reads.insert(seq);
            }
            Planned::ConversationRead { conversation, seq } => {
                let conversation = &mut self.conversations[conversation];
                conversation.mark = conversation.mark.max(seq);
            }
        }
    }
}

/// What the queries are checked against: every conversation of the run, and each
/// user's expected unread count.
pub(super) struct Expected {
    pub(super) conversations: Vec<Conversation>,
    /// Users of the pool and their counts (0 for those with nothing unread).
    pub(super) unread: Vec<(String, u64)>,
}

impl Expected {
    pub(super) fn of(workload: &Workload, generators: Vec<Generator>) -> Self {
        let conversations: Vec<Conversation> = generators
            .into_iter()
            .flat_map(|generator| generator.conversations)
            .collect();
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for conversation in &conversations {
            *counts.entry(conversation.reader.as_str()).or_default() += conversation.unread();
        }
        let unread = (0..workload.users)
            .map(|index| {
                let user = workload.user(index);
                let count = counts.get(user.as_str()).copied().unwrap_or(0);
                (user, count)
            })
            .collect();
        Self {
            conversations,
            unread,
        }
    }

    /// Every message the api accepted, as (conversation index, seq): what the receipt
    /// queries pick from.
    pub(super) fn messages(&self) -> Vec<(usize, u64)> {
        self.conversations
            .iter()
            .enumerate()
            .flat_map(|(index, conversation)| {
                conversation.created.iter().map(move |seq| (index, *seq))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use rand::SeedableRng as _;

    use super::*;

    fn workload() -> Workload {
        Workload {
            partner: "bench".into(),
            prefix: "r1-".into(),
            users: 10,
        }
    }

    #[test]
    fn each_message_is_followed_by_its_read_one_by_one_or_up_to_it_by_conversation() {
        let mut generator = Generator::new(&workload(), "k0", 2, &mut StdRng::seed_from_u64(1));
        let mut kinds = Vec::new();
        for _ in 0..8 {
            let mut body = String::new();
            let (planned, event_id) = generator.next_event(&mut body, 5);
            let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(parsed["partner"], "bench");
            assert_eq!(parsed["eventId"], event_id.as_str());
            kinds.push(planned);
        }
        let created = |conversation, seq| Planned::Created { conversation, seq };
        assert_eq!(
            kinds,
            vec![
                created(0, 1),
                created(1, 1),
                Planned::MessageRead {
                    conversation: 0,
                    seq: 1
                },
                Planned::ConversationRead {
                    conversation: 1,
                    seq: 1
                },
                created(0, 2),
                created(1, 2),
                Planned::MessageRead {
                    conversation: 0,
                    seq: 2
                },
                Planned::ConversationRead {
                    conversation: 1,
                    seq: 2
                },
            ]
        );
        let conversation = &generator.conversations[0];
        assert_ne!(conversation.sender, conversation.reader);
    }

    #[test]
    fn the_expectations_follow_from_what_was_accepted_only() {
        let mut generator = Generator::new(&workload(), "k0", 1, &mut StdRng::seed_from_u64(1));
        for seq in 1..=5 {
            generator.accepted(Planned::Created {
                conversation: 0,
                seq,
            });
        }
        generator.accepted(Planned::MessageRead {
            conversation: 0,
            seq: 1,
        });
        generator.accepted(Planned::ConversationRead {
            conversation: 0,
            seq: 3,
        });
        generator.accepted(Planned::MessageRead {
            conversation: 0,
            seq: 5,
        });
        let reader = generator.conversations[0].reader.clone();
        let conversation = &generator.conversations[0];
        assert_eq!(conversation.read_of(1), Some("conversation_read"));
        assert_eq!(conversation.read_of(3), Some("conversation_read"));
        assert_eq!(conversation.read_of(4), None);
        assert_eq!(conversation.read_of(5), Some("message_read"));
        let expected = Expected::of(&workload(), vec![generator]);
        assert_eq!(expected.messages().len(), 5);
        let counts: HashMap<_, _> = expected.unread.into_iter().collect();
        assert_eq!(counts.len(), 10);
        assert_eq!(counts[&reader], 1, "seq 4 only");
        assert_eq!(counts.values().sum::<u64>(), 1);
    }
}
