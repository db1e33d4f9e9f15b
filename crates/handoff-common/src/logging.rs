//! Logs go to stderr through `tracing`, one line per event; `RUST_LOG` or `-v` set the level.
//!
//! **Under journald** (`JOURNAL_STREAM` names the device and inode of our stderr, as systemd
//! sets it for `StandardError=journal`) each line starts with the sd-daemon priority prefix
//! (`<3>` for ERROR, `<4>` WARN, `<6>` INFO, `<7>` DEBUG/TRACE; a line whose message starts
//! with `ALERT` is `<2>`, crit), and no timestamp (the journal adds its own). journald strips
//! the prefix and files the line at that priority, so `journalctl -p err` finds rollbacks and
//! forced kills. We keep the stream (rather than the native journal protocol, `tracing-journald`)
//! because it is one non-blocking write per line on the fd we already have, keeps handoff's lines
//! in order with anything else written to stderr, and needs no second socket or crate.
//! Elsewhere: a UTC timestamp, no colour codes.
//!
//! **Never blocking.** A supervisor must keep supervising when nobody reads its stderr (a full
//! pipe, a stopped journald, a stopped `| less`). Lines go out with a non-blocking write: to a
//! socket with `MSG_DONTWAIT`, to a pipe through our own `O_NONBLOCK` open file description of it
//! (never the shared one, which workers and hooks may inherit). A line that would block is
//! dropped and counted ([`dropped_lines`]); the next line that gets through is preceded by a
//! WARN saying how many were lost. Regular files and terminals are written normally.

#![allow(unsafe_code)] // fd-level writes; each block has a SAFETY comment

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// Lines longer than this are cut, so that each write to a pipe is atomic (`PIPE_BUF`).
const MAX_LINE: usize = 4096;

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped so far because stderr would have blocked.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The syslog priority journald should file a line at.
pub fn priority(level: &Level, message: &str) -> u8 {
    match *level {
        Level::ERROR if message.starts_with("ALERT") => 2,
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Whether fd 2 is the journal stream systemd connected (`JOURNAL_STREAM=dev:ino` matches it).
/// A `JOURNAL_STREAM` inherited by a process whose stderr was redirected does not count.
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// How lines reach fd 2.
enum Sink {
    /// A socket (journal stream or other): `send(MSG_DONTWAIT)`.
    Socket,
    /// A pipe or FIFO, through our own non-blocking open file description.
    Pipe(OwnedFd),
    /// A file or terminal: plain writes.
    Plain,
}

impl Sink {
    fn for_stderr() -> Sink {
        use nix::sys::stat::{SFlag, fstat};
        let Ok(st) = fstat(std::io::stderr()) else {
            return Sink::Plain;
        };
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFSOCK {
            Sink::Socket
        } else if kind == SFlag::S_IFIFO {
            // Opening /proc/self/fd/2 of a pipe makes a new open file description of the same
            // pipe: O_NONBLOCK on it affects nobody else.
            let path = c"/proc/self/fd/2";
            // SAFETY: open(2) with a valid C string; the fd it returns is owned below.
            let fd = unsafe {
                libc::open(
                    path.as_ptr(),
                    libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Sink::Plain;
            }
            // SAFETY: fd was just opened and is owned by nothing else.
            Sink::Pipe(unsafe { OwnedFd::from_raw_fd(fd) })
        } else {
            Sink::Plain
        }
    }

    /// Writes all of `buf` or nothing that matters: `Err(WouldBlock)` when it would block.
    fn write_line(&self, buf: &[u8]) -> io::Result<()> {
        let mut rest = buf;
        while !rest.is_empty() {
            let n = match self {
                Sink::Plain => return io::stderr().write_all(rest),
                // SAFETY: send/write on a valid fd with a valid buffer and its length.
                Sink::Socket => unsafe {
                    libc::send(
                        2,
                        rest.as_ptr().cast(),
                        rest.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                },
                Sink::Pipe(fd) => unsafe {
                    libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len())
                },
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            rest = &rest[n as usize..];
        }
        Ok(())
    }
}

struct Output {
    sink: Sink,
    journald: bool,
}

static OUTPUT: Mutex<Option<Output>> = Mutex::new(None);

/// Prepares one event's bytes: cut to [`MAX_LINE`], and under journald every continuation line
/// of a multi-line message carries the first line's priority prefix too.
fn shape(buf: &[u8], journald: bool) -> Vec<u8> {
    let mut line = buf.to_vec();
    if journald
        && let Some(end) = line.iter().position(|&b| b == b'>')
        && line.first() == Some(&b'<')
        && end <= 2
    {
        let prefix = line[..=end].to_vec();
        let body_end = line.len().saturating_sub(1);
        let mut out = Vec::with_capacity(line.len() + 8);
        for (i, &b) in line.iter().enumerate() {
            out.push(b);
            if b == b'\n' && i < body_end {
                out.extend_from_slice(&prefix);
            }
        }
        line = out;
    }
    if line.len() > MAX_LINE {
        line.truncate(MAX_LINE - 4);
        line.extend_from_slice(b"...\n");
    }
    line
}

fn emit(buf: &[u8]) {
    let Ok(mut guard) = OUTPUT.lock() else { return };
    let Some(out) = guard.as_mut() else {
        let _ = io::stderr().write_all(buf);
        return;
    };
    let dropped = DROPPED.load(Ordering::Relaxed);
    if dropped > 0 {
        let note = format!(
            "{}WARN {dropped} log line(s) dropped: stderr was not writable (nobody reading it?)\n",
            if out.journald { "<4>" } else { "" }
        );
        if out.sink.write_line(note.as_bytes()).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        DROPPED.fetch_sub(dropped, Ordering::Relaxed);
    }
    if out.sink.write_line(&shape(buf, out.journald)).is_err() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// The `MakeWriter` of the subscriber: each event is written (or dropped) whole.
#[derive(Clone, Copy)]
struct NonBlocking;

/// Collects one event's formatted bytes, hands them to [`emit`] on drop.
struct EventBuf(Vec<u8>);

impl Write for EventBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventBuf {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            emit(&self.0);
        }
    }
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = EventBuf;
    fn make_writer(&'a self) -> EventBuf {
        EventBuf(Vec::new())
    }
}

/// `<N>LEVEL message fields` under journald, `TIME LEVEL message fields` elsewhere.
struct LineFormat {
    journald: bool,
}

#[derive(Default)]
struct MessageOf(String);

impl tracing::field::Visit for MessageOf {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let level = event.metadata().level();
        if self.journald {
            let mut m = MessageOf::default();
            event.record(&mut m);
            write!(writer, "<{}>", priority(level, &m.0))?;
        } else {
            SystemTime.format_time(&mut writer)?;
            writer.write_char(' ')?;
        }
        write!(writer, "{level} ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let journald = stderr_is_journal();
    if let Ok(mut o) = OUTPUT.lock() {
        *o = Some(Output {
            sink: Sink::for_stderr(),
            journald,
        });
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(NonBlocking)
        .with_ansi(false)
        .event_format(LineFormat { journald })
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(priority(&Level::ERROR, "rolled back: ..."), 3);
        assert_eq!(priority(&Level::ERROR, "ALERT: worker still running"), 2);
        assert_eq!(priority(&Level::WARN, "x"), 4);
        assert_eq!(priority(&Level::INFO, "x"), 6);
        assert_eq!(priority(&Level::DEBUG, "x"), 7);
        assert_eq!(priority(&Level::TRACE, "x"), 7);
    }

    #[test]
    fn continuation_lines_keep_the_priority() {
        assert_eq!(shape(b"<3>ERROR a\nb\n", true), b"<3>ERROR a\n<3>b\n");
        assert_eq!(shape(b"ERROR a\nb\n", false), b"ERROR a\nb\n");
        let long = vec![b'x'; 10_000];
        let cut = shape(&long, false);
        assert_eq!(cut.len(), MAX_LINE);
        assert!(cut.ends_with(b"...\n"));
    }

    #[test]
    fn a_full_pipe_drops_instead_of_blocking() {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::fcntl::fcntl(
            &w,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let sink = Sink::Pipe(w);
        let line = vec![b'x'; 1000];
        let mut written = 0;
        let mut refused = 0;
        for _ in 0..1000 {
            match sink.write_line(&line) {
                Ok(()) => written += 1,
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    refused += 1;
                }
            }
        }
        // A 64 KiB pipe takes some dozens of lines, then refuses without blocking.
        assert!(written > 10 && refused > 0, "{written} {refused}");
        drop(r);
    }
}
