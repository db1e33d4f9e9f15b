//! What each worker's process tree uses: resident memory and CPU time, sampled from /proc.
//!
//! Workers have no cgroup of their own, so /proc is the source: one walk reads every
//! `/proc/PID/stat` once, however many workers are asked about (64 workers cost one walk, not
//! 64), and each worker's tree is then put together in memory. A process belongs to worker W
//! when W is among its ancestors (by `ppid`), or when it is in W's process group (every
//! worker leads its own): that also catches a descendant re-parented to handoff (the child
//! subreaper) that kept the group. Each process counts for one worker at most.
//!
//! Only `/proc/PID/stat` is read: it takes no lock on the process's memory map (unlike
//! `smaps` or `cmdline`, which can block behind a process stuck in the kernel), and it holds
//! everything needed (ppid, pgid, flags, times, RSS). The figures:
//! - **RSS**: the sum of each process's resident set (what `ps` and `pm2 list` show): pages
//!   two processes share (a fork's copy-on-write pages, the same shared library) count in
//!   each. Proportional figures (`smaps_rollup`) would need the memory-map lock per process.
//! - **CPU time**: user + system time of every live process of the tree (all its threads),
//!   plus the times of the children they reaped (`cutime`, `cstime`), so a worker that runs
//!   short-lived commands is charged for them. Descendants reaped by handoff (re-parented
//!   ones) are not.
//!
//! `max_memory` needs only the RSS, once a second: [`tree_rss`] walks down each worker's
//! tree by `/proc/PID/task/TID/children` instead, so its cost is the workers' processes, not
//! the host's (it misses descendants re-parented to handoff, which `handoff status` counts).
//!
//! The walk is robust to what /proc does under it: pids vanish between the directory read
//! and the file read (skipped), a command name may hold spaces, parentheses or invalid
//! UTF-8 (the name ends at the *last* `)`), kernel threads have no memory (skipped by their
//! flag), and with `hidepid=` another user's processes are invisible (they are missing from
//! the sum; a worker that cannot be read at all has no sample rather than a zero).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// One worker's process tree, as one sample saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Resident memory, summed over the tree's processes (bytes).
    pub rss_bytes: u64,
    /// User + system time of the tree, with the reaped children's.
    pub cpu: Duration,
    /// Processes in the tree (the worker included).
    pub processes: u32,
}

/// The fields of `/proc/PID/stat` a sample needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    /// `PF_*` flags (a kernel thread has `PF_KTHREAD`).
    pub flags: u64,
    /// utime + stime + cutime + cstime, in clock ticks.
    pub ticks: u64,
    /// Resident pages.
    pub rss_pages: u64,
}

/// `PF_KTHREAD` (include/linux/sched.h): not exported by libc.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Parses one `/proc/PID/stat` line: `pid (comm) state ppid pgrp ...`. The command name may
/// hold anything but a NUL (spaces, `) `, newlines, bytes that are not UTF-8), so the fields
/// start after the *last* `)`.
pub fn parse_stat(line: &[u8]) -> Option<Stat> {
    let open = line.iter().position(|b| *b == b'(')?;
    let close = line.iter().rposition(|b| *b == b')')?;
    let pid = std::str::from_utf8(&line[..open])
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let rest = std::str::from_utf8(line.get(close + 1..)?).ok()?;
    // Field 3 (state) is index 0 here: field N is index N - 3.
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let num = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    let signed = |n: usize| -> Option<i32> { f.get(n - 3)?.parse().ok() };
    Some(Stat {
        pid,
        ppid: signed(4)?,
        pgrp: signed(5)?,
        flags: num(9)?,
        ticks: num(14)? + num(15)? + num(16)? + num(17)?,
        // Field 24; a zombie shows 0.
        rss_pages: num(24)?,
    })
}

/// Reads every process's stat under `proc` (a procfs mount: `/proc`, or another one in
/// tests). Processes that vanish or cannot be read are left out; kernel threads too.
pub fn read_all(proc: &Path) -> Vec<Stat> {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::Mode;
    let Ok(dir) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    // Opened relative to the procfs root (no path walk from `/` per process), read with one
    // `read` into a buffer that holds any stat line (about 300 bytes; the name is at most
    // 64): std's `read_to_end` adds an fstat, an lseek and a second read per file, which
    // doubled the walk's syscalls.
    let Ok(root) = std::fs::File::open(proc) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    for entry in dir.flatten() {
        let name = entry.file_name();
        // Only the numeric entries are processes (threads are under /proc/PID/task).
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fd) = openat(
            &root,
            format!("{pid}/stat").as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) else {
            continue; // gone since the directory was read, or hidden from us
        };
        let Ok(n) = nix::unistd::read(&fd, &mut buf) else {
            continue;
        };
        match parse_stat(&buf[..n]) {
            Some(st) if st.pid == pid && st.flags & PF_KTHREAD == 0 => out.push(st),
            _ => {}
        }
    }
    out
}

/// Groups processes into the trees of `roots` (worker pids). A root missing from `procs`
/// (gone, or unreadable) gets no entry.
pub fn trees(procs: &[Stat], roots: &[i32], tick: Duration, page: u64) -> HashMap<i32, Usage> {
    let index: HashMap<i32, usize> = procs.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
    let mut children: HashMap<i32, Vec<usize>> = HashMap::new();
    for (i, p) in procs.iter().enumerate() {
        children.entry(p.ppid).or_default().push(i);
    }
    // Which root each process counts for; a process is taken once. Descendants first, then
    // the members of a root's process group that left its tree (and their descendants).
    let mut owner: Vec<Option<i32>> = vec![None; procs.len()];
    let mut stack = Vec::new();
    let mut claim = |seed: usize, root: i32, owner: &mut Vec<Option<i32>>| {
        stack.push(seed);
        while let Some(i) = stack.pop() {
            // Already taken: also ends a cycle that pid reuse in the middle of a walk could
            // make (A read with parent B, then B gone and its pid reused by a child of A).
            if owner[i].is_some() {
                continue;
            }
            owner[i] = Some(root);
            if let Some(c) = children.get(&procs[i].pid) {
                stack.extend(c.iter().copied());
            }
        }
    };
    for &root in roots {
        if let Some(&i) = index.get(&root) {
            claim(i, root, &mut owner);
        }
    }
    for (i, p) in procs.iter().enumerate() {
        if owner[i].is_none() && index.contains_key(&p.pgrp) && roots.contains(&p.pgrp) {
            claim(i, p.pgrp, &mut owner);
        }
    }
    let mut out: HashMap<i32, Usage> = HashMap::new();
    for (i, o) in owner.iter().enumerate() {
        let Some(root) = o else { continue };
        let u = out.entry(*root).or_default();
        u.rss_bytes += procs[i].rss_pages * page;
        u.cpu += tick * procs[i].ticks.min(u32::MAX as u64) as u32;
        u.processes += 1;
    }
    out
}

/// The length of a clock tick and of a page, as the kernel counts them in /proc.
fn units() -> (Duration, u64) {
    use nix::unistd::{SysconfVar, sysconf};
    let hz = sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as u64;
    let page = sysconf(SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096)
        .max(1) as u64;
    (Duration::from_nanos(1_000_000_000 / hz), page)
}

/// One sample of the trees of `roots` (worker pids) from `proc`: one walk for all of them.
pub fn sample_at(proc: &Path, roots: &[i32]) -> HashMap<i32, Usage> {
    if roots.is_empty() {
        return HashMap::new();
    }
    let (tick, page) = units();
    trees(&read_all(proc), roots, tick, page)
}

/// [`sample_at`] on `/proc`.
pub fn sample(roots: &[i32]) -> HashMap<i32, Usage> {
    sample_at(Path::new("/proc"), roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn st(pid: i32, ppid: i32, pgrp: i32, rss_pages: u64, ticks: u64) -> Stat {
        Stat {
            pid,
            ppid,
            pgrp,
            flags: 0,
            ticks,
            rss_pages,
        }
    }

    #[test]
    fn a_command_name_with_parentheses_spaces_and_newlines_parses() {
        let rest = b" S 10 42 42 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 12345 1000000 250 \
                     18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n";
        for comm in [
            &b"node"[..],
            b"a) (b",
            b") ",
            b"x)\n1 (y",
            b"\xff\xfe bad utf8)",
            b"",
        ] {
            let mut line = b"4242 (".to_vec();
            line.extend_from_slice(comm);
            line.push(b')');
            line.extend_from_slice(rest);
            let s = parse_stat(&line).unwrap_or_else(|| panic!("{comm:?}"));
            assert_eq!(
                s,
                Stat {
                    pid: 4242,
                    ppid: 10,
                    pgrp: 42,
                    flags: 4194560,
                    ticks: 7 + 3 + 2 + 1,
                    rss_pages: 250
                },
                "{comm:?}"
            );
        }
        assert_eq!(parse_stat(b""), None);
        assert_eq!(parse_stat(b"12 (cut short) S 1 2"), None);
    }

    #[test]
    fn trees_take_descendants_and_group_members_once() {
        let procs = [
            st(1, 0, 1, 100, 1),      // init: nobody's
            st(10, 1, 10, 10, 5),     // handoff
            st(100, 10, 100, 1, 10),  // worker A
            st(101, 100, 100, 2, 1),  // its child
            st(102, 101, 102, 4, 1),  // grandchild in its own group: still A's (ancestry)
            st(200, 10, 200, 8, 2),   // worker B
            st(201, 10, 200, 16, 3),  // B's child re-parented to handoff, still in B's group
            st(202, 201, 202, 32, 0), // and its child, in a group of its own
            st(300, 10, 100, 64, 0),  // something in A's group re-parented: A's
            // A cycle, as pid reuse in the middle of a walk could read it: no hang.
            st(400, 401, 400, 1, 0),
            st(401, 400, 401, 1, 0),
        ];
        let t = trees(&procs, &[100, 200, 999], Duration::from_millis(10), 1);
        assert_eq!(
            t[&100],
            Usage {
                rss_bytes: 1 + 2 + 4 + 64,
                cpu: Duration::from_millis(120),
                processes: 4
            }
        );
        assert_eq!(
            t[&200],
            Usage {
                rss_bytes: 8 + 16 + 32,
                cpu: Duration::from_millis(50),
                processes: 3
            }
        );
        // A worker that cannot be seen has no sample (not a zero one).
        assert!(!t.contains_key(&999));
        let t = trees(&procs, &[400], Duration::from_millis(10), 1);
        assert_eq!(t[&400].processes, 2);
    }

    #[test]
    fn kernel_threads_and_vanishing_entries_are_skipped() {
        let all = read_all(Path::new("/proc"));
        // This process is there; kernel threads (kthreadd, pid 2, when visible) are not.
        let me = std::process::id() as i32;
        assert!(all.iter().any(|s| s.pid == me));
        assert!(all.iter().all(|s| s.pid != 2 && s.flags & PF_KTHREAD == 0));
        // A directory that is not procfs at all: nothing, no error.
        assert!(read_all(Path::new("/nonexistent-proc")).is_empty());
    }

    /// A real tree: sh, its child sh, and a grandchild that allocates (and touches) 40 MB.
    #[test]
    fn a_real_tree_counts_a_grandchild_s_memory_and_cpu() {
        let python = ["python3", "/usr/bin/python3"]
            .into_iter()
            .find(|p| Command::new(p).arg("-c").arg("").status().is_ok());
        let Some(python) = python else {
            eprintln!("no python3: skipped");
            return;
        };
        let dir = std::env::temp_dir().join(format!("handoff-usage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ready = dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        // The grandchild burns some CPU, then holds 40 MB it wrote to (resident), and says so.
        let script = format!(
            "import time\nx = 0\nt = time.time()\nwhile time.time() - t < 0.3: x += 1\n\
             b = bytearray(40 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1\n\
             open({:?}, 'w').write('1')\ntime.sleep(60)\n",
            ready.display().to_string()
        );
        use std::os::unix::process::CommandExt;
        // In a process group of its own, so the whole tree can be killed at the end.
        let mut child = Command::new("sh")
            .process_group(0)
            .arg("-c")
            .arg(format!("sh -c '{python} -c \"$0\"; :' \"$0\"; :"))
            .arg(&script)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let root = child.id() as i32;
        let t0 = std::time::Instant::now();
        while !ready.exists() && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let became_ready = ready.exists();
        let u = sample(&[root]);
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(root),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(became_ready, "the grandchild never allocated");
        let u = u[&root];
        assert_eq!(u.processes, 3, "{u:?}");
        assert!(u.rss_bytes >= 40 * 1024 * 1024, "{u:?}");
        // 0.3 s of busy loop in the grandchild, at clock-tick resolution.
        assert!(u.cpu >= Duration::from_millis(200), "{u:?}");
        // Gone: no sample.
        assert!(sample(&[root]).is_empty());
    }
}

/// For `max_memory`, once a second: the resident memory of each root's process tree (the
/// root and all its descendants), in bytes; `None` for a root that is gone. A worker's children (Node's cluster, a shell's
/// pipeline) count: the limit is about what the worker costs.
pub fn tree_rss(roots: &[i32]) -> Vec<Option<u64>> {
    tree_rss_counted(roots).0
}

/// [`tree_rss`], and how many processes' `stat` it read. It walks down from each root by
/// `/proc/PID/task/TID/children`, so the cost is the workers' trees, not the host's process
/// count: one walk of all of /proc every second cost handoff 8.6% of a CPU (86 ms with the
/// event loop blocked, each second) on a host running 3,000 processes. Without
/// `CONFIG_PROC_CHILDREN` it falls back to that walk.
fn tree_rss_counted(roots: &[i32]) -> (Vec<Option<u64>>, usize) {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    let mut read = 0;
    let mut out = Vec::with_capacity(roots.len());
    for &root in roots {
        let Some((_, rss)) = stat_of(root, page) else {
            read += 1;
            out.push(None);
            continue;
        };
        read += 1;
        let mut total = rss;
        let mut stack = match children_of(root) {
            Some(c) => c,
            None => return (tree_rss_full_walk(roots, page), read),
        };
        while let Some(p) = stack.pop() {
            read += 1;
            // A process that exits meanwhile counts nothing.
            total += stat_of(p, page).map_or(0, |(_, rss)| rss);
            stack.extend(children_of(p).unwrap_or_default());
        }
        out.push(Some(total));
    }
    (out, read)
}

/// (parent pid, resident bytes) from `/proc/PID/stat`: the fields after the last ')' (the
/// command name may hold any byte) are state, ppid, ... and rss (in pages) is the 22nd.
fn stat_of(pid: i32, page: u64) -> Option<(i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let rss: u64 = rest.get(21)?.parse().ok()?;
    Some((ppid, rss * page))
}

/// The children of every thread of `pid`; `None` when the kernel has no `children` files
/// (built without `CONFIG_PROC_CHILDREN`). A process gone meanwhile has none.
fn children_of(pid: i32) -> Option<Vec<i32>> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Some(vec![]);
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        match std::fs::read_to_string(t.path().join("children")) {
            Ok(c) => out.extend(c.split_whitespace().filter_map(|p| p.parse::<i32>().ok())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && t.path().exists() => {
                return None;
            }
            Err(_) => {}
        }
    }
    Some(out)
}

/// The walk of every process in /proc, by parent pids: for kernels without `children`.
fn tree_rss_full_walk(roots: &[i32], page: u64) -> Vec<Option<u64>> {
    let mut procs: HashMap<i32, (i32, u64)> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![None; roots.len()];
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(st) = stat_of(pid, page) {
            procs.insert(pid, st);
        }
    }
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (pid, (ppid, _)) in &procs {
        children.entry(*ppid).or_default().push(*pid);
    }
    roots
        .iter()
        .map(|root| {
            procs.get(root)?;
            let mut total = 0;
            let mut stack = vec![*root];
            while let Some(p) = stack.pop() {
                total += procs.get(&p).map_or(0, |(_, rss)| *rss);
                stack.extend(children.get(&p).into_iter().flatten().copied());
            }
            Some(total)
        })
        .collect()
}

#[cfg(test)]
mod tree_tests {
    use super::*;
    use std::time::Duration;

    /// The sample reads the workers' trees, not every process on the host: 200 unrelated
    /// processes change nothing in what it reads.
    #[test]
    fn a_memory_sample_reads_the_workers_trees_only() {
        let mut others: Vec<std::process::Child> = (0..200)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .expect("sleep")
            })
            .collect();
        // A "worker" with a child of its own (the shell waits for the sleep).
        let mut worker = std::process::Command::new("sh")
            .args(["-c", "sleep 30; :"])
            .spawn()
            .expect("sh");
        let root = worker.id() as i32;
        let mut found = (vec![], 0);
        for _ in 0..100 {
            found = tree_rss_counted(&[root, i32::MAX]);
            if found.1 >= 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (rss, read) = found;
        for c in others.iter_mut().chain([&mut worker]) {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(rss[0].is_some_and(|b| b > 0), "{rss:?}");
        assert_eq!(rss[1], None, "a root that is gone");
        assert!(read <= 4, "read {read} processes' stat for a tree of 2");
    }
}
