//! What the operating system says about a process (its memory, its CPU time,
//! its descriptor limit), and scratch directories for one test.

use std::path::PathBuf;

use crate::harness::watchdog;

/// Resident memory of a process, in KiB.
pub fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// CPU time (user + system) of a process, in clock ticks.
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after_name` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Raises this process's soft descriptor limit to at least `n` (if allowed).
pub fn ensure_fd_limit(n: libc::rlim_t) {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < n {
            lim.rlim_cur = n.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// `klav-it-<name>-<pid>` in the system's temp directory, removed first if it
/// is there; not created (klav and the embedded cluster make their own).
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("klav-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A [`scratch_dir`] for an embedded cluster of the test's own: should the
/// test die, the cluster is stopped and the directory removed once the test
/// process has ended.
pub fn cluster_dir(name: &str) -> PathBuf {
    let dir = scratch_dir(name);
    watchdog(&dir);
    dir
}
