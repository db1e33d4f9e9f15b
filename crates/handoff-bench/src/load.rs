//! The load generator: N closed-loop HTTP/1.1 clients, one thread each, blocking sockets.
//!
//! Each client sends a request, waits for the whole answer, records (start time, latency,
//! outcome) and paces itself to at most one request per `interval` (so the 2-core machine is
//! not saturated by the clients themselves and latency reflects the server, not the run
//! queue). Two kinds of client run side by side: a new connection per request
//! (`Connection: close`) and keep-alive (one connection reused until the server says
//! `Connection: close`, then a new one). Nothing is retried: a request that does not get a
//! complete `200` answer is a failure, sorted by kind.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Ok,
    /// connect(2) got ECONNREFUSED: nobody held the listening socket.
    Refused,
    /// ECONNRESET / EPIPE / ECONNABORTED: the connection was torn down under the request.
    Reset,
    /// No complete answer within the timeout.
    Timeout,
    /// The connection closed before a complete answer (no bytes, or a cut body).
    Short,
    /// An answer that is not `HTTP/1.1 200` with the worker's body.
    Bad,
    /// Any other error (its message is kept).
    Other,
}

pub const FAILURE_KINDS: [Outcome; 6] = [
    Outcome::Refused,
    Outcome::Reset,
    Outcome::Timeout,
    Outcome::Short,
    Outcome::Bad,
    Outcome::Other,
];

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Reset => "reset",
            Outcome::Timeout => "timeout",
            Outcome::Short => "short",
            Outcome::Bad => "bad",
            Outcome::Other => "other",
        }
    }
}

/// One request. Times are microseconds since the run's epoch.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub start_us: u64,
    pub lat_us: u32,
    pub outcome: Outcome,
    pub keepalive: bool,
}

impl Sample {
    pub fn end_us(&self) -> u64 {
        self.start_us + self.lat_us as u64
    }
}

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    /// Clients that open a new connection per request.
    pub new_conn_clients: usize,
    /// Clients that keep their connection alive.
    pub keepalive_clients: usize,
    /// Each client sends at most one request per interval (closed loop: never more than one
    /// outstanding). Zero: back to back.
    pub interval: Duration,
    /// The keep-alive clients' interval, when it differs (busy mode paces each kind of client
    /// to its own share of the capacity).
    pub keepalive_interval: Option<Duration>,
    /// Connect / read / write timeout of one request.
    pub timeout: Duration,
}

/// A running load: stop it with [`Running::finish`].
pub struct Running {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<ClientLog>>,
}

#[derive(Default)]
struct ClientLog {
    samples: Vec<Sample>,
    errors: Vec<String>,
}

/// Everything the clients recorded, sorted by start time, plus the first error messages.
pub struct Recorded {
    pub samples: Vec<Sample>,
    pub errors: Vec<String>,
}

/// Starts the clients. `epoch` is the zero of every sample's timestamp.
pub fn start(spec: &LoadSpec, epoch: Instant) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let kinds = std::iter::repeat_n(false, spec.new_conn_clients)
        .chain(std::iter::repeat_n(true, spec.keepalive_clients));
    for (i, keepalive) in kinds.enumerate() {
        let (spec, stop) = (spec.clone(), stop.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("client-{i}"))
                .spawn(move || client(&spec, keepalive, epoch, &stop, i))
                .expect("spawn client thread"),
        );
    }
    Running { stop, threads }
}

impl Running {
    pub fn finish(self) -> Recorded {
        self.stop.store(true, Ordering::SeqCst);
        let mut samples = Vec::new();
        let mut errors = Vec::new();
        for t in self.threads {
            let log = t.join().expect("client thread");
            samples.extend(log.samples);
            errors.extend(log.errors);
        }
        samples.sort_by_key(|s| s.start_us);
        errors.truncate(20);
        Recorded { samples, errors }
    }
}

fn client(
    spec: &LoadSpec,
    keepalive: bool,
    epoch: Instant,
    stop: &AtomicBool,
    index: usize,
) -> ClientLog {
    let mut log = ClientLog {
        samples: Vec::with_capacity(1 << 16),
        errors: Vec::new(),
    };
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(512);
    let interval = if keepalive {
        spec.keepalive_interval.unwrap_or(spec.interval)
    } else {
        spec.interval
    };
    // Spread the clients' first requests over one interval.
    let mut next = Instant::now() + interval.mul_f64(index as f64 / 16.0 % 1.0);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        let t = Instant::now();
        next = t + interval;
        let result = request(spec, keepalive, &mut conn, &mut buf);
        let lat = t.elapsed();
        let outcome = match result {
            Ok(()) => Outcome::Ok,
            Err(e) => {
                conn = None;
                let kind = classify(&e);
                if log.errors.len() < 5 {
                    log.errors.push(format!(
                        "{} client {index} at {:.3} s: {kind:?}: {e}",
                        if keepalive { "keep-alive" } else { "new-conn" },
                        (t - epoch).as_secs_f64()
                    ));
                }
                kind
            }
        };
        log.samples.push(Sample {
            start_us: (t - epoch).as_micros() as u64,
            lat_us: lat.as_micros().min(u32::MAX as u128) as u32,
            outcome,
            keepalive,
        });
    }
    log
}

fn classify(e: &io::Error) -> Outcome {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => Outcome::Refused,
        ConnectionReset | ConnectionAborted | BrokenPipe => Outcome::Reset,
        TimedOut | WouldBlock => Outcome::Timeout,
        UnexpectedEof => Outcome::Short,
        InvalidData => Outcome::Bad,
        _ => Outcome::Other,
    }
}

/// One request on `conn` (opened if None); leaves `conn` open only when both sides keep it.
fn request(
    spec: &LoadSpec,
    keepalive: bool,
    conn: &mut Option<TcpStream>,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&spec.addr, spec.timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(spec.timeout))?;
        s.set_write_timeout(Some(spec.timeout))?;
        *conn = Some(s);
    }
    let s = conn.as_mut().expect("connection");
    let req: &[u8] = if keepalive {
        b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    } else {
        b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    };
    s.write_all(req)?;
    let server_keeps = read_response(s, buf)?;
    if !(keepalive && server_keeps) {
        *conn = None;
    }
    Ok(())
}

/// Reads one complete response; checks it is a 200 with the worker's body (`pid=...`, or the
/// Egg app's JSON carrying its pid).
/// Returns whether the server keeps the connection open.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    let mut chunk = [0u8; 1024];
    let header_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 8192 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "header too long",
            ));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed after {} bytes of the header", buf.len()),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..header_end])
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "header not UTF-8"))?;
    if !head.starts_with("HTTP/1.1 200 ") {
        let line = head.lines().next().unwrap_or_default().to_string();
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("status line {line:?}"),
        ));
    }
    let mut length = None;
    let mut keep = true;
    for line in head.lines().skip(1) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        if k == "content-length" {
            length = v.parse::<usize>().ok();
        } else if k == "connection" && v.contains("close") {
            keep = false;
        }
    }
    let Some(length) = length else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no Content-Length",
        ));
    };
    while buf.len() < header_end + length {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed after {} of {length} body bytes",
                    buf.len() - header_end
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if !is_worker_body(&buf[header_end..]) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "body is not the worker's `pid=...` (or the Egg app's JSON with its pid)",
        ));
    }
    Ok(keep)
}

/// The example workers answer `pid=...`; the Egg app answers `{"version":..,"pid":..,...}`.
fn is_worker_body(body: &[u8]) -> bool {
    body.starts_with(b"pid=") || (body.starts_with(b"{") && find(body, b"\"pid\":").is_some())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One request outside any measurement: is something serving on `addr`?
pub fn probe(addr: SocketAddr) -> io::Result<()> {
    let spec = LoadSpec {
        addr,
        new_conn_clients: 1,
        keepalive_clients: 0,
        interval: Duration::ZERO,
        keepalive_interval: None,
        timeout: Duration::from_secs(2),
    };
    request(&spec, false, &mut None, &mut Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot server thread that answers each connection with `answer` (or closes).
    fn serve(answers: Vec<&'static [u8]>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for a in answers {
                let (mut c, _) = l.accept().unwrap();
                let mut b = [0u8; 512];
                let _ = c.read(&mut b);
                let _ = c.write_all(a);
            }
        });
        addr
    }

    fn spec(addr: SocketAddr) -> LoadSpec {
        LoadSpec {
            addr,
            new_conn_clients: 1,
            keepalive_clients: 0,
            interval: Duration::ZERO,
            keepalive_interval: None,
            timeout: Duration::from_secs(2),
        }
    }

    fn one(answer: &'static [u8]) -> Outcome {
        let addr = serve(vec![answer]);
        match request(&spec(addr), false, &mut None, &mut Vec::new()) {
            Ok(()) => Outcome::Ok,
            Err(e) => classify(&e),
        }
    }

    #[test]
    fn sorts_answers_into_outcomes() {
        assert_eq!(
            one(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\npid=1\n"),
            Outcome::Ok
        );
        assert_eq!(one(b""), Outcome::Short);
        assert_eq!(
            one(b"HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\npid=1\n"),
            Outcome::Short
        );
        assert_eq!(
            one(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"),
            Outcome::Bad
        );
        assert_eq!(
            one(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhi\n"),
            Outcome::Bad
        );
        // The Egg app's JSON answer counts; JSON without the pid does not.
        assert_eq!(
            one(b"HTTP/1.1 200 OK\r\nContent-Length: 29\r\n\r\n{\"version\":\"1.0.0\",\"pid\":42}\n"),
            Outcome::Ok
        );
        assert_eq!(
            one(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"error\":42}\n"),
            Outcome::Bad
        );
    }

    #[test]
    fn refused_when_nobody_listens() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let e = request(&spec(addr), false, &mut None, &mut Vec::new()).unwrap_err();
        assert_eq!(classify(&e), Outcome::Refused);
    }
}
