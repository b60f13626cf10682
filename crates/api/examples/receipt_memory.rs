//! What the receipt table costs in memory per conversation member: the process's
//! resident memory (VmRSS) before and after filling a table with a million members,
//! for a shape of conversations given as arguments (one shape per process: memory freed
//! by one table would be reused by the next). Ids are 21 and 13 bytes
//! (`conversation-00000042`, `user-00000042`).
//!
//!     for shape in "2 0" "2 3" "10 0" "100 0"; do
//!         cargo run --release -p fanout-api --example receipt_memory -- $shape
//!     done

use fanout_api::receipts::ReceiptTable;
use fanout_schema::v1::{self, user_event::Kind};

const MEMBERS: usize = 1_000_000;

fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

fn receipt(conversation: usize, user: usize, kind: Kind, seq: u64) -> v1::ReadReceipt {
    v1::ReadReceipt {
        partner: "acme".into(),
        conversation_id: format!("conversation-{conversation:08}"),
        user: format!("user-{user:08}"),
        kind: kind.into(),
        seq,
        read_at_ms: 1_764_000_000_000,
        ..Default::default()
    }
}

fn main() {
    let mut arguments = std::env::args()
        .skip(1)
        .map(|argument| argument.parse::<usize>().unwrap_or(0));
    let members_per_conversation = arguments.next().unwrap_or(2).max(1);
    let message_reads = arguments.next().unwrap_or(0) as u64;
    {
        let conversations = MEMBERS / members_per_conversation;
        let before = resident_bytes();
        let mut table = ReceiptTable::new();
        for conversation in 0..conversations {
            for member in 0..members_per_conversation {
                let user = conversation * 7 + member;
                table.apply(&receipt(conversation, user, Kind::ConversationRead, 10));
                for read in 0..message_reads {
                    table.apply(&receipt(conversation, user, Kind::MessageRead, 12 + read));
                }
            }
        }
        let members = table.stats().members;
        let grown = resident_bytes().saturating_sub(before);
        println!(
            "{members_per_conversation} members a conversation, {message_reads} message reads above each mark: {:.0} B per member ({members} members, {} MiB)",
            grown as f64 / members as f64,
            grown / (1 << 20)
        );
    }
}
