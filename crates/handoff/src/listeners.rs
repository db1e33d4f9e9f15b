//! The listening sockets: taken from systemd (socket activation) or bound by handoff itself.
//!
//! Either way the result is the same list of [`Listener`]s, held open (CLOEXEC) for handoff's
//! whole life and handed to every worker at fds 3.. in this order. They are never closed
//! during a rollover: that is what keeps new connections waiting in the kernel's accept queue
//! instead of being refused. One socket per address, shared by all workers; never
//! SO_REUSEPORT, whose per-socket queues drop their connections when a listener closes.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, UnixAddr, sockopt,
};

use crate::config::{ListenAddr, ListenSpec};

/// One listening socket.
#[derive(Debug)]
pub struct Listener {
    pub name: String,
    /// Human description for logs and status: `127.0.0.1:8080`, `/run/app.sock`, `fd 3`.
    pub describe: String,
    fd: OwnedFd,
    /// A unix socket path handoff created and must remove on exit.
    created_path: Option<PathBuf>,
}

impl Listener {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The unix socket path handoff created (removed when handoff exits).
    pub fn created_path(&self) -> Option<&std::path::Path> {
        self.created_path.as_deref()
    }

    /// A listener carried over `handoff reexec`, by its fd.
    pub fn restored(
        name: String,
        describe: String,
        fd: OwnedFd,
        created_path: Option<PathBuf>,
    ) -> Listener {
        Listener {
            name,
            describe,
            fd,
            created_path,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(p) = &self.created_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Takes ownership of socket-activated fds (as returned by
/// `sd_notify::listen_fds_with_names`, which already validated `LISTEN_PID`, set CLOEXEC and
/// stripped the variables).
pub fn from_activation(fds: Vec<(RawFd, String)>) -> io::Result<Vec<Listener>> {
    fds.into_iter()
        .map(|(raw, name)| {
            // Refuse anything that is not a socket before claiming it.
            let st = nix::sys::stat::fstat(unsafe { BorrowedFd::borrow_raw(raw) })?;
            // SAFETY (both blocks): the activation protocol hands us fds 3..3+n; each is open
            // (fstat succeeded) and nothing else in this process owns it.
            if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("activated fd {raw} is not a socket"),
                ));
            }
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let describe = local_addr(&fd).unwrap_or_else(|| format!("fd {raw}"));
            Ok(Listener {
                name,
                describe,
                fd,
                created_path: None,
            })
        })
        .collect()
}

/// Binds and listens on each spec. Unnamed sockets are called `listen0`, `listen1`, ...
pub fn bind_all(specs: &[ListenSpec]) -> io::Result<Vec<Listener>> {
    specs.iter().enumerate().map(|(i, s)| bind(s, i)).collect()
}

fn bind(spec: &ListenSpec, index: usize) -> io::Result<Listener> {
    let name = spec
        .name
        .clone()
        .unwrap_or_else(|| format!("listen{index}"));
    // The accept queue is what holds connections while no worker accepts: make it as deep as
    // the kernel allows (capped by net.core.somaxconn), as systemd's Backlog= default does.
    let backlog = Backlog::MAXCONN;
    let context = |e: nix::Error, what: &str| {
        io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
    };
    match &spec.addr {
        ListenAddr::Tcp(addr) => {
            let family = if addr.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
                .map_err(|e| context(e, "socket"))?;
            socket::setsockopt(&fd, sockopt::ReuseAddr, &true)
                .map_err(|e| context(e, "SO_REUSEADDR"))?;
            let res = match addr {
                std::net::SocketAddr::V4(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(*a)),
                std::net::SocketAddr::V6(a) => {
                    // [::]:port means IPv6 only, as it reads; list 0.0.0.0:port too for v4.
                    socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)
                        .map_err(|e| context(e, "IPV6_V6ONLY"))?;
                    socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(*a))
                }
            };
            res.map_err(|e| {
                if e == nix::Error::EACCES && addr.port() < 1024 {
                    io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "cannot bind {addr}: {e}: ports below 1024 need root; let systemd hold \
                             the socket (a .socket unit with ListenStream={}, e.g. handoff@APP.socket) \
                             or give handoff CAP_NET_BIND_SERVICE",
                            addr.port()
                        ),
                    )
                } else {
                    context(e, &format!("cannot bind {addr}"))
                }
            })?;
            socket::listen(&fd, backlog)
                .map_err(|e| context(e, &format!("cannot listen on {addr}")))?;
            let describe = local_addr(&fd).unwrap_or_else(|| addr.to_string());
            Ok(Listener {
                name,
                describe,
                fd,
                created_path: None,
            })
        }
        ListenAddr::Unix(path) => {
            // A socket file left by a crashed run would make bind fail: replace it, but never
            // delete something that is not a socket.
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                if !meta.file_type().is_socket() {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} exists and is not a socket", path.display()),
                    ));
                }
                std::fs::remove_file(path)?;
            }
            let fd = socket::socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(|e| context(e, "socket"))?;
            let addr = UnixAddr::new(path)
                .map_err(|e| context(e, &format!("unusable socket path {}", path.display())))?;
            socket::bind(fd.as_raw_fd(), &addr)
                .map_err(|e| context(e, &format!("cannot bind {}", path.display())))?;
            socket::listen(&fd, backlog)
                .map_err(|e| context(e, &format!("cannot listen on {}", path.display())))?;
            Ok(Listener {
                name,
                describe: path.display().to_string(),
                fd,
                created_path: Some(path.clone()),
            })
        }
    }
}

fn local_addr(fd: &OwnedFd) -> Option<String> {
    let addr: socket::SockaddrStorage = socket::getsockname(fd.as_raw_fd()).ok()?;
    if let Some(a) = addr.as_sockaddr_in() {
        return Some(std::net::SocketAddrV4::from(*a).to_string());
    }
    if let Some(a) = addr.as_sockaddr_in6() {
        return Some(std::net::SocketAddrV6::from(*a).to_string());
    }
    addr.as_unix_addr()
        .and_then(|u| u.path().map(|p| p.display().to_string()))
}

/// `LISTEN_FDNAMES` for the workers.
pub fn fd_names(listeners: &[Listener]) -> String {
    listeners
        .iter()
        .map(|l| l.name.as_str())
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_listen;

    #[test]
    fn binds_tcp_and_unix_with_cloexec() {
        let dir = std::env::temp_dir().join(format!("handoff-listen-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("a.sock");
        std::fs::write(&sock, b"").unwrap();
        let specs = vec![
            parse_listen("web=127.0.0.1:0").unwrap(),
            parse_listen(sock.to_str().unwrap()).unwrap(),
        ];
        // A regular file in the way is not deleted.
        assert!(
            bind_all(&specs)
                .unwrap_err()
                .to_string()
                .contains("not a socket")
        );
        std::fs::remove_file(&sock).unwrap();
        let ls = bind_all(&specs).unwrap();
        assert_eq!(fd_names(&ls), "web:listen1");
        assert!(ls[0].describe.starts_with("127.0.0.1:"));
        for l in &ls {
            let flags = nix::fcntl::fcntl(l.fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert!(flags & libc::FD_CLOEXEC != 0, "listener without CLOEXEC");
        }
        // A client can connect before anyone accepts: the queue holds it.
        let _c = std::net::TcpStream::connect(&ls[0].describe).unwrap();
        drop(ls);
        assert!(!sock.exists(), "created unix socket removed on drop");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
