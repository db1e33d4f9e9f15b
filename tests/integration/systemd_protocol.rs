//! What handoff tells its own service manager, checked against a fake NOTIFY_SOCKET (the
//! `Type=notify` and `Type=notify-reload` protocols, without systemd).

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::harness::*;

fn collect(sock: &UnixDatagram, until: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    while t0.elapsed() < until {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    got
}

#[test]
fn speaks_notify_reload_protocol_to_its_service_manager() {
    let dir = TempDir::new("sdproto");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let mut h = Handoff::start(
        "sdproto",
        Opts {
            args: s(&["--listen", "127.0.0.1:0", "--workers", "2"]),
            worker: vec![bin("handoff-fixture").display().to_string()],
            env: vec![
                ("NOTIFY_SOCKET", path.display().to_string()),
                ("WATCHDOG_USEC", "200000".into()),
            ],
            wait_ready: 2,
        },
    );
    let start = collect(&sock, Duration::from_millis(500)).join("");
    assert!(
        start.contains("READY=1\n"),
        "no READY=1 after the first generation: {start:?}"
    );
    assert!(start.contains("EXTEND_TIMEOUT_USEC="), "{start:?}");
    assert!(start.contains("STATUS=gen 1: 2/2 ready"), "{start:?}");
    // Watchdog pings at half the interval: ~5 in 500 ms.
    let pings = start.matches("WATCHDOG=1").count();
    assert!((3..=8).contains(&pings), "{pings} watchdog pings in 500 ms");

    assert_eq!(h.reload_cli(&[]).0, 0);
    let reload = collect(&sock, Duration::from_millis(300));
    let reloading = reload
        .iter()
        .position(|m| m.contains("RELOADING=1"))
        .expect("RELOADING=1");
    assert!(
        reload[reloading].contains("MONOTONIC_USEC="),
        "RELOADING=1 must carry MONOTONIC_USEC: {:?}",
        reload[reloading]
    );
    let ready = reload
        .iter()
        .rposition(|m| m.contains("READY=1"))
        .expect("READY=1 after the rollover");
    assert!(ready > reloading);
    assert!(
        reload
            .iter()
            .any(|m| m.contains("STATUS=gen 2: 2/2 ready") && m.contains("last rollover ok in")),
        "{reload:?}"
    );

    // A failed rollover still ends the reload with READY=1 (systemd then reports the failure
    // through ExecReload's exit status, or the reload's result with notify-reload).
    assert!(h.stop().success());
    let stop = collect(&sock, Duration::from_millis(200)).join("");
    assert!(stop.contains("STOPPING=1"), "{stop:?}");
}
