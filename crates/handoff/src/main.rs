//! `handoff`: parse the command line, set up logging, call the library, map errors to exit codes.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use handoff::cli::{Cli, RunArgs, Sub};
use handoff::config::{self, ConfigError};
use handoff::exit;
use handoff::notify::SystemdNotifier;
use handoff::paths;
use handoff::protocol::{self, ClientError, Request, Response};
use handoff::reexec;
use handoff::supervisor::{self, Runtime};
use handoff::text::printable;

/// What `main` captured from the environment before anything else ran.
struct Inherited {
    activated: Vec<(i32, String)>,
    notify_socket: Option<String>,
    watchdog: Option<std::time::Duration>,
    /// This is the new image of a `handoff reexec`.
    reexec: Option<Reexec>,
}

/// The handover variables of a `handoff reexec` (see `handoff::reexec`).
struct Reexec {
    /// `HANDOFF_REEXEC_STATE`: the state's fd, as given (parsed when restoring, so that even
    /// a garbled value ends in the fallback).
    state: String,
    /// `HANDOFF_REEXEC_FALLBACK`: (old image fd, state fd), when there is an image to fall
    /// back to.
    fallback: Option<(i32, i32)>,
    /// `HANDOFF_REEXEC_FAILED`: this is the old image, back after the new one failed.
    failed: Option<String>,
}

/// Reads and strips the variables meant for handoff alone (socket activation, notify,
/// watchdog). Runs first thing in `main`, while the process is single-threaded: changing the
/// environment once threads exist is undefined behaviour.
fn take_inherited() -> anyhow::Result<Inherited> {
    // Variables meant for another process (LISTEN_PID not ours, e.g. inherited from an
    // activated parent) are dropped, not an error: only ours are validated.
    let ours = std::env::var("LISTEN_PID").is_ok_and(|p| p == std::process::id().to_string());
    let activated: Vec<(i32, String)> = if ours {
        // Sets CLOEXEC on the fds and unsets the variables.
        sd_notify::listen_fds_with_names(true)
            .context("reading the socket-activation variables")?
            .collect()
    } else {
        Vec::new()
    };
    let notify_socket = std::env::var("NOTIFY_SOCKET").ok();
    let reexec = std::env::var(reexec::STATE_ENV).ok().map(|state| Reexec {
        state,
        fallback: std::env::var(reexec::FALLBACK_ENV).ok().and_then(|v| {
            let (a, b) = v.split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        }),
        failed: std::env::var(reexec::FAILED_ENV).ok(),
    });
    // As libsystemd's sd_watchdog_enabled(): WATCHDOG_PID, when set, must be ours. (The
    // sd-notify crate also requires it to be set, which systemd always does but a test
    // harness cannot, not knowing our pid in advance.)
    let pid_ok =
        std::env::var("WATCHDOG_PID").map_or(true, |p| p == std::process::id().to_string());
    let watchdog = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|u| u.parse::<u64>().ok())
        .filter(|&u| u > 0 && pid_ok)
        .map(std::time::Duration::from_micros);
    // SAFETY: single-threaded here (no runtime, no logger thread yet); nothing reads the
    // environment concurrently.
    #[allow(unsafe_code)]
    unsafe {
        for var in handoff::contract::HANDOFF_ONLY {
            std::env::remove_var(var);
        }
    }
    // Strays inherited from our own parent must not reach workers or hooks: mark every fd
    // past stdio and the activated sockets close-on-exec. Not yet after a reexec: the fds
    // the state names must still reach the old image if this one fails to restore
    // (`restore` does it once restored).
    let first_stray = if reexec.is_some() {
        libc::c_uint::MAX as libc::c_long
    } else {
        3 + activated.len() as libc::c_long
    };
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on fds; no memory involved.
    #[allow(unsafe_code)]
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first_stray,
            libc::c_uint::MAX as libc::c_long,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_long,
        );
    }
    Ok(Inherited {
        activated,
        notify_socket,
        watchdog,
        reexec,
    })
}

fn main() -> ExitCode {
    let mut inherited = take_inherited();
    // The new image of a `handoff reexec`: the state, not the command line, says what to do.
    if let Ok(inh) = &mut inherited
        && let Some(r) = inh.reexec.take()
    {
        let verbose = Cli::try_parse().map_or(0, |c| c.verbose);
        handoff_common::logging::init(verbose);
        return ExitCode::from(restore(r) as u8);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    let code = match cli.command {
        Sub::Run(args) => {
            handoff_common::logging::init(cli.verbose);
            match inherited {
                Ok(inh) => run(args, inh),
                Err(e) => {
                    eprintln!("handoff: {e:#}");
                    exit::USAGE
                }
            }
        }
        Sub::Reload(args) => {
            let if_changed = args.if_changed;
            rollover(&args.client, "reload", &mut |path, idle, progress| {
                protocol::reload(path, if_changed, idle, progress)
            })
        }
        Sub::Scale(args) => rollover(&args.client, "scale", &mut |path, idle, progress| {
            protocol::scale(path, args.workers, idle, progress)
        }),
        Sub::RestartWorker(args) => rollover(
            &args.client,
            "restart-worker",
            &mut |path, idle, progress| protocol::restart_worker(path, args.slot, idle, progress),
        ),
        Sub::Status(args) => status(&args.client, args.json),
        Sub::Reexec(args) => reexec_client(&args.client),
        Sub::CheckState => reexec::check_state_stdin(),
        Sub::Man { dir } => match handoff::cli::write_man_pages(&dir) {
            Ok(pages) => {
                for p in pages {
                    println!("{}", p.display());
                }
                0
            }
            Err(e) => {
                eprintln!("handoff: writing man pages to {}: {e}", dir.display());
                exit::SOFTWARE
            }
        },
        Sub::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "handoff",
                &mut std::io::stdout(),
            );
            0
        }
    };
    ExitCode::from(code as u8)
}

fn run(args: RunArgs, inh: Inherited) -> i32 {
    let file = match &args.config {
        Some(path) => match config::load_file(path) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("{e}");
                return exit::CONFIG;
            }
        },
        None => config::Options::default(),
    };
    let settings = match file.overlay(args.options()).settle() {
        Ok(s) => s,
        Err(e @ ConfigError::Missing(_)) => {
            tracing::error!("{e}");
            return if args.config.is_some() {
                exit::CONFIG
            } else {
                exit::USAGE
            };
        }
        Err(e) => {
            tracing::error!("{e}");
            return exit::CONFIG;
        }
    };
    let credentials = match handoff::spawn::Credentials::for_workers(
        settings.user.as_deref(),
        settings.group.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return exit::CONFIG;
        }
    };
    if let Some(g) = &settings.status_group
        && let Err(e) = resolve_group(g)
    {
        tracing::error!("status_group = {g:?}: {e}");
        return exit::CONFIG;
    }
    let reload = supervisor::ConfigSource {
        file: args.config.clone(),
        cli: args.options(),
    };
    match prepare_and_run(settings, credentials, reload, inh) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            exit::SOFTWARE
        }
    }
}

fn prepare_and_run(
    settings: config::Settings,
    credentials: Option<handoff::spawn::Credentials>,
    config: supervisor::ConfigSource,
    inh: Inherited,
) -> anyhow::Result<i32> {
    let listeners = if inh.activated.is_empty() {
        if settings.listen.is_empty() {
            anyhow::bail!(
                "no sockets: handoff was not socket-activated and no --listen (or `listen = [...]`) was given"
            );
        }
        handoff::listeners::bind_all(&settings.listen)?
    } else {
        if !settings.listen.is_empty() {
            tracing::info!(
                "socket-activated: using the {} inherited socket(s), ignoring `listen`",
                inh.activated.len()
            );
        }
        handoff::listeners::from_activation(inh.activated)?
    };
    let runtime_dir = settings
        .runtime_dir
        .clone()
        .unwrap_or_else(paths::default_runtime_dir);
    let status_gid = match &settings.status_group {
        Some(g) => {
            Some(resolve_group(g).map_err(|e| anyhow::anyhow!("status_group = {g:?}: {e}"))?)
        }
        None => None,
    };
    // Workers of another user reach their notify sockets, and status_group its status.sock,
    // through the dir: 0711 then (listing stays closed; control.sock stays 0600).
    paths::make_private_dir(&runtime_dir, credentials.is_some() || status_gid.is_some())
        .with_context(|| format!("cannot create runtime dir {}", runtime_dir.display()))?;
    let control_path = settings
        .control
        .clone()
        .unwrap_or_else(|| paths::control_in(&runtime_dir));
    let notifier = SystemdNotifier::new(inh.notify_socket.as_deref()).context("NOTIFY_SOCKET")?;
    let nofile = raise_fd_limit();
    // Forked while handoff is still single-threaded (no runtime yet).
    let guard = match handoff::guard::Guard::start(settings.drain_signal, settings.drain_timeout) {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!(
                "cannot start the guard process ({e}); if handoff is killed, workers' children may outlive it"
            );
            None
        }
    };
    let rt = Runtime {
        binary: std::env::current_exe().context("resolving handoff's own path")?,
        argv: std::env::args_os()
            .map(|a| reexec::os_to_bytes(&a))
            .collect(),
        notify_socket: inh.notify_socket.clone(),
        settings,
        config,
        listeners,
        base_env: std::env::vars_os().collect(),
        notifier,
        watchdog: inh.watchdog,
        runtime_dir,
        control_path,
        credentials,
        nofile,
        guard,
        status_gid,
    };
    // One thread: the supervisor is a single state machine, and fork is simplest to reason
    // about with no other threads running Rust code.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(supervisor::run(rt, None))
}

/// The new image of a `handoff reexec`: take over from the state, or fall back to the old
/// image with it.
fn restore(r: Reexec) -> i32 {
    let why = match load_state(&r) {
        Ok((rt, restored)) => {
            // The state's fds are ours now; the old image's fd is not needed any more.
            if let Some((image, _)) = r.fallback {
                let _ = nix::unistd::close(image);
            }
            reexec::cloexec_all();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("{e}");
                    return exit::SOFTWARE;
                }
            };
            return match runtime.block_on(supervisor::run(rt, Some(restored))) {
                Ok(code) => code,
                Err(e) => {
                    tracing::error!("{e:#}");
                    exit::SOFTWARE
                }
            };
        }
        Err(e) => e,
    };
    tracing::error!("reexec: cannot take over from the state: {why}");
    let Some((image, state_fd)) = r.fallback else {
        return exit::SOFTWARE;
    };
    // Back to the old image, with the same state; it tells the client why.
    tracing::warn!("reexec: falling back to the previous handoff image");
    let _ = reexec::set_cloexec(image, true);
    let _ = reexec::set_cloexec(state_fd, false);
    let mut env: Vec<Vec<u8>> = std::env::vars_os()
        .map(|(k, v)| reexec::env_entry(k.as_encoded_bytes(), v.as_encoded_bytes()))
        .collect();
    env.push(reexec::env_entry(
        reexec::STATE_ENV.as_bytes(),
        state_fd.to_string().as_bytes(),
    ));
    env.push(reexec::env_entry(
        reexec::FAILED_ENV.as_bytes(),
        why.replace('\n', " ").as_bytes(),
    ));
    let argv: Vec<Vec<u8>> = std::env::args_os()
        .map(|a| reexec::os_to_bytes(&a))
        .collect();
    let e = reexec::fexec(image, &argv, &env);
    tracing::error!("reexec: cannot fall back to the previous image: {e}");
    exit::SOFTWARE
}

/// The runtime and the executor's restored state, from the state the old image wrote. Takes
/// ownership of no fd until every one is known to be open, so that a failure leaves them all
/// for the fallback.
fn load_state(r: &Reexec) -> Result<(Runtime, supervisor::Restored), String> {
    use std::os::fd::FromRawFd;
    let fd: i32 = r
        .state
        .parse()
        .map_err(|_| format!("{} = {:?} is no fd", reexec::STATE_ENV, r.state))?;
    // A new open of the memfd: its own offset, and the fd itself stays for a fallback.
    let mut f = std::fs::File::open(format!("/proc/self/fd/{fd}"))
        .map_err(|e| format!("cannot open the state (fd {fd}): {e}"))?;
    let state = reexec::read_state(&mut f)?;
    for fd in state.fds() {
        nix::fcntl::fcntl(
            // SAFETY: borrowed only for this F_GETFD; a closed number is EBADF.
            unsafe_borrow(fd),
            nix::fcntl::FcntlArg::F_GETFD,
        )
        .map_err(|e| format!("fd {fd} named by the state: {e}"))?;
    }
    let machine = handoff::supervisor::machine::Machine::import(
        state.machine.clone(),
        std::time::Instant::now(),
    )
    .map_err(|e| format!("the machine's state: {e}"))?;
    let notifier = SystemdNotifier::new(state.notify_socket.as_deref())
        .map_err(|e| format!("NOTIFY_SOCKET: {e}"))?;
    // From here on nothing fails: every fd is taken.
    // SAFETY (each take_fd): the previous image left these fds open for us alone.
    #[allow(unsafe_code)]
    let take = |fd| unsafe { reexec::take_fd(fd) };
    let listeners = state
        .listeners
        .into_iter()
        .map(|l| {
            handoff::listeners::Listener::restored(l.name, l.describe, take(l.fd), l.created_path)
        })
        .collect();
    let guard = state
        .guard
        .map(|(pid, fd)| handoff::guard::Guard::restored(pid, take(fd)));
    let restored = supervisor::Restored {
        machine,
        control: std::os::unix::net::UnixListener::from(take(state.control_fd)),
        status: state
            .status_fd
            .map(|fd| std::os::unix::net::UnixListener::from(take(fd))),
        notify: state
            .notify
            .into_iter()
            .map(|n| (n.worker, take(n.fd), n.path, n.allowed_uids, n.owner))
            .collect(),
        hooks: state.hooks,
        replies: state
            .replies
            .into_iter()
            .map(|fd| std::os::unix::net::UnixStream::from(take(fd)))
            .collect(),
        next_waiter: state.next_waiter,
        traversable: state.traversable,
        uptime: state.uptime,
        reexecs: state.reexecs,
        last_status_line: state.last_status_line,
        failed: r.failed.clone(),
        handed_over: state.workers,
    };
    // The state itself has been read.
    drop(f);
    #[allow(unsafe_code)]
    drop(unsafe { std::fs::File::from_raw_fd(fd) });
    let rt = Runtime {
        settings: state.settings,
        config: state.config,
        listeners,
        base_env: state
            .base_env
            .iter()
            .map(|(k, v)| (reexec::bytes_to_os(k), reexec::bytes_to_os(v)))
            .collect(),
        notifier,
        watchdog: state.watchdog,
        runtime_dir: state.runtime_dir,
        control_path: state.control_path,
        credentials: state.credentials,
        nofile: state.nofile,
        guard,
        status_gid: state.status_gid,
        binary: state.binary,
        argv: state.argv,
        notify_socket: state.notify_socket,
    };
    Ok((rt, restored))
}

fn unsafe_borrow(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: used for one fcntl(F_GETFD) on a number that may be closed (EBADF then).
    #[allow(unsafe_code)]
    unsafe {
        std::os::fd::BorrowedFd::borrow_raw(fd)
    }
}

/// `handoff reexec`: ask, then check the answer against what ran before.
fn reexec_client(client: &handoff::cli::ClientArgs) -> i32 {
    let path = client.control_path();
    let before = match protocol::request(&path, &Request::Status, client.timeout()) {
        Ok(Response::Status(r)) => r,
        Ok(_) => {
            eprintln!(
                "handoff: {} answered a status request with something else",
                path.display()
            );
            return exit::SOFTWARE;
        }
        Err(e) => return client_error(e, client),
    };
    let fallback_hint = |pid: u32| {
        format!(
            "handoff (pid {pid}) keeps running its current binary. To run the new one anyway: `systemctl restart {}` (a cold restart: the workers are restarted too)",
            client.unit()
        )
    };
    // The reexec waits for a running rollover to end first: give it that long.
    let timeout = client
        .timeout()
        .map(|t| t.max(std::time::Duration::from_secs(60)));
    let reply = match protocol::request(&path, &Request::Reexec, timeout) {
        Ok(Response::Reexec(r)) => r,
        Ok(_) => {
            eprintln!(
                "handoff: {} answered a reexec with something else",
                path.display()
            );
            return exit::SOFTWARE;
        }
        Err(ClientError::Refused(why)) => {
            eprintln!("handoff: reexec failed: {}", printable(&why));
            eprintln!("handoff: {}", fallback_hint(before.pid));
            return exit::FAILED;
        }
        Err(e) => {
            let code = client_error(e, client);
            eprintln!(
                "handoff: the reexec's outcome is unknown: see `{}`",
                client.command_line("status")
            );
            return code;
        }
    };
    // The workers to compare with are those of the exec (the old image wrote them into the
    // state), not those of `before`: a reexec waits for a running rollover to end.
    if reply.pid != before.pid || reply.workers != reply.handed_over {
        eprintln!(
            "handoff: reexec answered by pid {} with workers {:?}; handed over: pid {} with workers {:?}",
            reply.pid, reply.workers, before.pid, reply.handed_over
        );
        return exit::FAILED;
    }
    println!("{}", printable(&reply.message));
    0
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: systemd starts services at 1024, which
/// a burst of control connections plus the workers' notify sockets can exhaust. Returns the
/// limit as found, which workers get back.
fn raise_fd_limit() -> Option<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!("cannot raise the open-files limit from {soft} to {hard}: {e}");
    }
    Some((soft, hard))
}

fn client_error(e: ClientError, client: &handoff::cli::ClientArgs) -> i32 {
    eprintln!("handoff: {}", printable(&e.to_string()));
    if let ClientError::NotRunning { .. } = e
        && client.app.is_none()
        && client.control.is_none()
    {
        // The usual slip: the units' sockets live in /run/handoff-APP, not the default.
        let apps = running_apps();
        if !apps.is_empty() {
            eprintln!(
                "handoff: running here: {}",
                apps.iter()
                    .map(|a| format!("`handoff status --app {a}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    e.exit_code()
}

/// Apps of `handoff@APP` units that have a control socket on this host.
fn running_apps() -> Vec<String> {
    let mut apps: Vec<String> = std::fs::read_dir("/run")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let app = name.strip_prefix("handoff-")?.to_string();
            paths::app_control(&app).exists().then_some(app)
        })
        .collect();
    apps.sort();
    apps
}

type Ask<'a> = dyn FnMut(
        &std::path::Path,
        Option<std::time::Duration>,
        &mut dyn FnMut(&str),
    ) -> Result<Response, ClientError>
    + 'a;

/// `reload` and `scale`: ask for a rollover, wait for its outcome, print it, exit by it.
fn rollover(client: &handoff::cli::ClientArgs, what: &str, ask: &mut Ask) -> i32 {
    let path = client.control_path();
    // Progress lines are for a person watching; under systemd (ExecReload=) they'd be noise.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut progress = |p: &str| {
        if tty {
            eprintln!("handoff: {p}");
        }
    };
    match ask(&path, client.timeout(), &mut progress) {
        Ok(Response::Reload(r)) => {
            for w in &r.warnings {
                eprintln!("handoff: warning: {}", printable(w));
            }
            if r.outcome.success() {
                // The message can quote a release's version or a worker's STATUS=.
                println!("{}", printable(&r.message));
                0
            } else {
                eprintln!(
                    "handoff: {what} failed ({}): {}",
                    r.outcome,
                    printable(&r.message)
                );
                eprintln!(
                    "handoff: details: `{}` and the journal (journalctl -u {} -p warning)",
                    client.command_line("status"),
                    client.unit()
                );
                exit::FAILED
            }
        }
        Ok(_) => {
            eprintln!(
                "handoff: {} answered a {what} with something else",
                path.display()
            );
            exit::SOFTWARE
        }
        Err(e) => client_error(e, client),
    }
}

fn status(client: &handoff::cli::ClientArgs, json: bool) -> i32 {
    let path = client.control_path();
    let mut answer = protocol::request(&path, &Request::Status, client.timeout());
    if let Err(ClientError::PermissionDenied { .. }) = answer {
        // Not root: the read-only status socket, when `status_group` lets us in.
        let ro = paths::status_beside(&path);
        match protocol::request(&ro, &Request::Status, client.timeout()) {
            Ok(r) => answer = Ok(r),
            Err(ClientError::PermissionDenied { .. }) | Err(ClientError::NotRunning { .. }) => {
                answer = Err(ClientError::PermissionDenied {
                    path: format!(
                        "{} (and {}, the read-only status socket, is {})",
                        path.display(),
                        ro.display(),
                        if ro.exists() {
                            "not for your groups"
                        } else {
                            "not set up: status_group"
                        }
                    ),
                })
            }
            Err(e) => answer = Err(e),
        }
    }
    match answer {
        Ok(Response::Status(r)) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).expect("status serializes")
                );
            } else {
                print!("{}", handoff::render::status(&r));
            }
            0
        }
        Ok(_) => {
            eprintln!(
                "handoff: {} answered a status request with something else",
                path.display()
            );
            exit::SOFTWARE
        }
        Err(e) => client_error(e, client),
    }
}

/// A group name or gid.
fn resolve_group(g: &str) -> Result<u32, String> {
    if let Ok(gid) = g.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(g) {
        Ok(Some(gr)) => Ok(gr.gid.as_raw()),
        Ok(None) => Err("no such group".into()),
        Err(e) => Err(e.to_string()),
    }
}
