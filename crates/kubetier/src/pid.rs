//! Signals to processes by pid, for processes this test process did not start (the API
//! server) as well as its own children: a zombie counts as gone.

use std::time::{Duration, Instant};

/// Stops process `pid` that this process did not start (SIGTERM, SIGKILL after `grace`), and
/// returns once it is gone.
pub(crate) async fn terminate(pid: i32, grace: Duration) {
    let deadline = Instant::now() + grace;
    signal(pid, rustix::process::Signal::TERM);
    while alive(pid) {
        if Instant::now() >= deadline {
            signal(pid, rustix::process::Signal::KILL);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub(crate) fn signal(pid: i32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

fn alive(pid: i32) -> bool {
    // A process that has ended but not been reaped by its parent (a zombie) counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
