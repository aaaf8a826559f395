//! A worker process's standard output and error, as the host logs them.
//!
//! Line by line, tagged with the plugin id, at most [`LINES_PER_SECOND`] lines a
//! second per stream, each cut at [`MAX_LINE`] bytes. What comes over that rate is
//! dropped unread (the line it ends in too) and counted in bytes, so the host's cost
//! is per read, not per line of what it drops: a plugin that writes gigabytes as fast
//! as it can costs the host little CPU and no memory. The last bytes of stderr are
//! kept for a crash's cause: what Rust prints before it aborts on a stack overflow or
//! a failed allocation, or a panic's message.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How many lines of a stream reach the log per second.
pub(super) const LINES_PER_SECOND: u32 = 100;
/// The longest line logged; the rest of a longer one is cut.
pub(super) const MAX_LINE: usize = 1024;
/// How many of a stream's last bytes are kept.
const TAIL: usize = 4096;

/// The last bytes a stream carried.
#[derive(Debug, Default)]
pub(super) struct Tail {
    bytes: Vec<u8>,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        let keep = &bytes[bytes.len().saturating_sub(TAIL)..];
        self.bytes.extend_from_slice(keep);
        let over = self.bytes.len().saturating_sub(TAIL);
        self.bytes.drain(..over);
    }

    /// The last `count` lines that are not blank, oldest first, trimmed.
    pub fn last_lines(&self, count: usize) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.bytes);
        let mut lines: Vec<String> = text
            .lines()
            .rev()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .take(count)
            .map(|line| line.chars().take(MAX_LINE).collect())
            .collect();
        lines.reverse();
        lines
    }
}

/// At most [`LINES_PER_SECOND`] lines a second: the current second, and the lines
/// let through in it.
#[derive(Debug)]
pub(super) struct Rate {
    window: Instant,
    used: u32,
}

impl Rate {
    pub fn new(now: Instant) -> Rate {
        Rate {
            window: now,
            used: 0,
        }
    }

    /// Starts a new second if the current one is over; says whether it did.
    pub fn roll(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            (self.window, self.used) = (now, 0);
            true
        } else {
            false
        }
    }

    /// Whether this second's lines are used up.
    pub fn full(&self) -> bool {
        self.used >= LINES_PER_SECOND
    }

    /// Lets one line through.
    pub fn take(&mut self) {
        self.used += 1;
    }
}

/// What a stream gives the log.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event<'a> {
    /// A line to log (without its newline, cut at [`MAX_LINE`]).
    Line(&'a [u8]),
    /// This many bytes were dropped over the rate since the last report.
    Dropped(u64),
}

/// Splits a stream into lines under the rate limit.
#[derive(Debug)]
pub(super) struct Lines {
    /// The line being read, up to [`MAX_LINE`] bytes.
    line: Vec<u8>,
    /// The line being read is dropped: it began over the rate.
    skipping: bool,
    /// The lines logged this second.
    rate: Rate,
    /// Bytes dropped since the last report.
    dropped: u64,
}

impl Lines {
    pub fn new(now: Instant) -> Lines {
        Lines {
            line: Vec::new(),
            skipping: false,
            rate: Rate::new(now),
            dropped: 0,
        }
    }

    /// Takes the next `bytes` of the stream, read at `now`.
    pub fn feed(&mut self, mut bytes: &[u8], now: Instant, out: &mut impl FnMut(Event<'_>)) {
        if self.rate.roll(now) {
            self.report(out);
        }
        while !bytes.is_empty() {
            if self.rate.full() {
                self.dropped += bytes.len() as u64;
                self.line.clear();
                self.skipping = true;
                return;
            }
            let Some(end) = memchr::memchr(b'\n', bytes) else {
                if self.skipping {
                    self.dropped += bytes.len() as u64;
                } else {
                    self.append(bytes);
                }
                return;
            };
            if self.skipping {
                self.dropped += end as u64 + 1;
                self.skipping = false;
            } else {
                self.append(&bytes[..end]);
                out(Event::Line(&self.line));
                self.rate.take();
                self.line.clear();
            }
            bytes = &bytes[end + 1..];
        }
    }

    /// The stream ended: logs its last line if it had no newline, and what was dropped.
    pub fn finish(&mut self, out: &mut impl FnMut(Event<'_>)) {
        if !self.line.is_empty() && !self.skipping && !self.rate.full() {
            out(Event::Line(&self.line));
        }
        self.line.clear();
        self.report(out);
    }

    fn append(&mut self, bytes: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn report(&mut self, out: &mut impl FnMut(Event<'_>)) {
        if self.dropped > 0 {
            out(Event::Dropped(self.dropped));
            self.dropped = 0;
        }
    }
}

/// Logs what a worker writes to `stream`, tagged with the plugin id, rate-limited,
/// keeping its last bytes in `tail` if given. Ends when the stream does.
pub(super) fn relay(
    id: String,
    stream: &'static str,
    mut pipe: impl Read + Send + 'static,
    tail: Option<Arc<Mutex<Tail>>>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("plugbay-{stream}-{id}"))
        .spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            let mut lines = Lines::new(Instant::now());
            let mut log = |event: Event<'_>| match event {
                Event::Line(line) => {
                    tracing::info!(plugin = %id, stream, "{}", String::from_utf8_lossy(line));
                }
                Event::Dropped(bytes) => {
                    tracing::warn!(plugin = %id, stream, dropped_bytes = bytes, "plugin output dropped (more than {LINES_PER_SECOND} lines a second)");
                }
            };
            loop {
                let read = match pipe.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(read) => read,
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                if let Some(tail) = &tail {
                    tail.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(&buffer[..read]);
                }
                lines.feed(&buffer[..read], Instant::now(), &mut log);
            }
            lines.finish(&mut log);
        })
        .expect("a thread can be spawned for a worker's output")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` at `now`; returns the lines logged and the drops reported.
    fn feed(lines: &mut Lines, chunks: &[&[u8]], now: Instant) -> (Vec<String>, Vec<u64>) {
        let (mut logged, mut dropped) = (Vec::new(), Vec::new());
        let mut out = |event: Event<'_>| match event {
            Event::Line(line) => logged.push(String::from_utf8_lossy(line).into_owned()),
            Event::Dropped(bytes) => dropped.push(bytes),
        };
        for chunk in chunks {
            lines.feed(chunk, now, &mut out);
        }
        (logged, dropped)
    }

    #[test]
    fn lines_are_joined_across_reads_and_cut_when_long() {
        let now = Instant::now();
        let mut lines = Lines::new(now);
        let long = vec![b'x'; MAX_LINE * 3];
        let (logged, dropped) = feed(&mut lines, &[b"one\ntw", b"o\n", &long, b"\nthree\n"], now);
        assert_eq!(logged.len(), 4);
        assert_eq!(logged[..2], ["one", "two"]);
        assert_eq!(logged[2], "x".repeat(MAX_LINE));
        assert_eq!(logged[3], "three");
        assert!(dropped.is_empty());
    }

    #[test]
    fn lines_over_the_rate_are_dropped_and_counted_until_the_next_second() {
        let start = Instant::now();
        let mut lines = Lines::new(start);
        let flood = "line\n".repeat(LINES_PER_SECOND as usize + 50) + "cut off mid-";
        let (logged, dropped) = feed(&mut lines, &[flood.as_bytes(), b"line\n"], start);
        assert_eq!(logged.len(), LINES_PER_SECOND as usize);
        assert!(dropped.is_empty(), "reported when the second is over");
        let later = start + Duration::from_millis(1500);
        let (logged, dropped) = feed(&mut lines, &[b"rest\nnext\n"], later);
        // 50 lines, the start of the cut line and the line after it.
        assert_eq!(dropped, [50 * 5 + 12 + 5]);
        // The end of the cut line is dropped too, and logging goes on after it.
        assert_eq!(logged, ["next"]);
        let mut reported = Vec::new();
        lines.finish(&mut |event: Event<'_>| {
            if let Event::Dropped(bytes) = event {
                reported.push(bytes);
            }
        });
        assert_eq!(reported, [5]);
    }

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let mut tail = Tail::default();
        tail.push(&vec![b'o'; 3 * TAIL]);
        tail.push(b"\nthread 'main' has overflowed its stack\n\n");
        tail.push(b"fatal runtime error: stack overflow, aborting\n");
        assert_eq!(
            tail.last_lines(2),
            [
                "thread 'main' has overflowed its stack",
                "fatal runtime error: stack overflow, aborting"
            ]
        );
        assert!(tail.bytes.len() <= TAIL);
    }
}
