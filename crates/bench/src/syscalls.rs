//! The write system calls of a process over a window, to state frames per write: by
//! `perf stat` on the syscall tracepoints, and by `/proc/<pid>/io`'s `syscw`.
//!
//! The two count different things. `syscw` counts the `write(2)` family only
//! (`write`, `writev`, `pwrite`, `sendfile`), not `send(2)`/`sendto(2)`/`sendmsg(2)`:
//! Rust's `TcpStream::write`, and so tokio's and tungstenite's, is a `send`, so a
//! server's frames to its sockets are not in `syscw` at all; what is there is mostly
//! eventfd wake-ups (tokio's and librdkafka's) and logging. perf's `sendto` is the
//! sockets' writes; `sendmsg` is librdkafka's (its Kafka requests).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::process::{Child, Command};

use crate::system::io_syscw;

/// The syscall tracepoints perf counts, and the field of [`WriteSyscalls`] each fills.
const EVENTS: [&str; 4] = [
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_sendmsg",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_writev",
];

/// perf needs a moment to attach to the processes before the window starts.
const PERF_ATTACH: Duration = Duration::from_millis(500);

/// The write syscalls of some processes over a load window, and the frames they wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WriteSyscalls {
    /// Frames the processes wrote over the window: the pushes their clients received.
    pub frames: u64,
    /// `"perf stat"`, or `None` where perf is not installed or could not attach (the
    /// counts below are then `None`, and only `syscw` is known).
    pub counted_by: Option<&'static str>,
    /// Calls of each syscall, from half a second before the window to its end.
    pub sendto: Option<u64>,
    pub sendmsg: Option<u64>,
    pub write: Option<u64>,
    pub writev: Option<u64>,
    /// `frames / (sendto + writev)`: frames per socket write (a Rust `TcpStream`
    /// writes with `sendto`, a vectored write with `writev`).
    pub frames_per_write_syscall: Option<f64>,
    /// `/proc/<pid>/io` `syscw` over the window (see the module's note: no `sendto`).
    pub syscw: Option<u64>,
    /// `frames / syscw`.
    pub frames_per_syscw: Option<f64>,
}

/// Counts the write syscalls of `pids` from [`WriteCounter::start`] to
/// [`WriteCounter::stop`].
pub(crate) struct WriteCounter {
    pids: Vec<u32>,
    syscw_before: Option<u64>,
    perf: Option<(Child, PathBuf)>,
}

impl WriteCounter {
    /// Starts perf on `pids` (its counts go to `output`) if it is installed, waits
    /// until it is attached, and reads their `syscw`.
    pub(crate) async fn start(pids: &[u32], output: &Path) -> Self {
        let perf = if pids.is_empty() {
            None
        } else {
            spawn_perf(pids, output)
        };
        if perf.is_some() {
            tokio::time::sleep(PERF_ATTACH).await;
        }
        Self {
            pids: pids.to_vec(),
            syscw_before: syscw_sum(pids),
            perf: perf.map(|child| (child, output.to_owned())),
        }
    }

    /// Stops counting, before the processes exit (perf stops with them); the frames
    /// are told after, by [`WriteSyscalls::with_frames`].
    pub(crate) async fn stop(self) -> WriteSyscalls {
        let syscw = match (self.syscw_before, syscw_sum(&self.pids)) {
            (Some(before), Some(after)) => Some(after.saturating_sub(before)),
            _ => None,
        };
        let counts = match self.perf {
            Some((child, output)) => stop_perf(child, &output).await,
            None => None,
        };
        let mut result = WriteSyscalls {
            syscw,
            ..WriteSyscalls::default()
        };
        if let Some([sendto, sendmsg, write, writev]) = counts {
            result.counted_by = Some("perf stat");
            result.sendto = Some(sendto);
            result.sendmsg = Some(sendmsg);
            result.write = Some(write);
            result.writev = Some(writev);
        }
        result
    }
}

impl WriteSyscalls {
    /// With the frames written over the window, and so frames per write.
    pub(crate) fn with_frames(self, frames: u64) -> Self {
        let socket_writes = self
            .sendto
            .zip(self.writev)
            .map(|(sendto, writev)| sendto + writev);
        Self {
            frames,
            frames_per_write_syscall: socket_writes.and_then(|calls| ratio(frames, calls)),
            frames_per_syscw: self.syscw.and_then(|calls| ratio(frames, calls)),
            ..self
        }
    }
}

/// Frames, write syscalls and frames per write, on one line.
pub fn line(writes: &WriteSyscalls) -> String {
    let count = |value: Option<u64>| value.map_or_else(|| "?".to_owned(), |n| n.to_string());
    let per = |value: Option<f64>| value.map_or_else(|| "?".to_owned(), |n| format!("{n:.3}"));
    format!(
        "{} frames; sendto {}, writev {}, write {}, sendmsg {} ({}): {} frames per write syscall; syscw {}: {} frames per syscw",
        writes.frames,
        count(writes.sendto),
        count(writes.writev),
        count(writes.write),
        count(writes.sendmsg),
        writes.counted_by.unwrap_or("perf not available"),
        per(writes.frames_per_write_syscall),
        count(writes.syscw),
        per(writes.frames_per_syscw)
    )
}

/// `frames / calls`, none over no call.
fn ratio(frames: u64, calls: u64) -> Option<f64> {
    (calls > 0).then(|| frames as f64 / calls as f64)
}

/// `syscw` of every pid, added up; `None` if one cannot be read.
fn syscw_sum(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|pid| io_syscw(*pid)).sum()
}

fn spawn_perf(pids: &[u32], output: &Path) -> Option<Child> {
    let pid_list = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    Command::new("perf")
        .args([
            "stat",
            "-x",
            ",",
            "-e",
            &EVENTS.join(","),
            "-p",
            &pid_list,
            "-o",
        ])
        .arg(output)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()
}

/// Stops perf with SIGINT (it writes its counts then) and reads them.
async fn stop_perf(mut child: Child, output: &Path) -> Option<[u64; 4]> {
    let pid = child.id()?;
    let interrupted = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .await
        .is_ok_and(|status| status.success());
    if !interrupted {
        return None;
    }
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .ok()?
        .ok()?;
    parse_perf_csv(&std::fs::read_to_string(output).ok()?)
}

/// The count of each of [`EVENTS`] in `perf stat -x ,`'s output. `<not counted>` (the
/// processes did not run while perf was attached) is 0; a missing or unsupported event
/// makes it `None`.
fn parse_perf_csv(text: &str) -> Option<[u64; 4]> {
    let mut counts = [None; 4];
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').collect();
        let (Some(count), Some(event)) = (fields.first(), fields.get(2)) else {
            continue;
        };
        let Some(slot) = EVENTS.iter().position(|known| known == event) else {
            continue;
        };
        counts[slot] = match *count {
            "<not counted>" => Some(0),
            count => count.trim().parse().ok(),
        };
    }
    Some([counts[0]?, counts[1]?, counts[2]?, counts[3]?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_counts_are_read_by_event_not_counted_is_zero() {
        let text = "# started on Sat Dec  5 01:01:04 2026\n\n\
            1200,,syscalls:sys_enter_sendto,77829461,100.00,,\n\
            <not counted>,,syscalls:sys_enter_sendmsg,0,100.00,,\n\
            86,,syscalls:sys_enter_write,77829461,100.00,,\n\
            3,,syscalls:sys_enter_writev,77829461,100.00,,\n";
        assert_eq!(parse_perf_csv(text), Some([1200, 0, 86, 3]));
        let unsupported = text.replace("3,,syscalls", "<not supported>,,syscalls");
        assert_eq!(parse_perf_csv(&unsupported), None);
        assert_eq!(parse_perf_csv("# started\n"), None);
    }

    #[test]
    fn frames_per_call_is_none_over_no_call() {
        assert_eq!(ratio(10, 4), Some(2.5));
        assert_eq!(ratio(10, 0), None);
    }
}
