//! The mesh's roles as child processes (of the `ambit` binary, or a stock ztunnel), with their output collected
//! line by line (and optionally echoed), and stopped with SIGTERM on drop.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ambit_netns::Netns;

/// What to do with each line a role prints.
pub type LineSink = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// A running role (`ambit control`, `ambit node`, `ambit cni`).
pub struct Role {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Role")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl Role {
    /// Starts `exe args…`, naming it `name` in what it prints.
    pub fn spawn(
        name: &str,
        exe: &Path,
        args: &[String],
        sink: Option<LineSink>,
    ) -> std::io::Result<Self> {
        let mut command = Command::new(exe);
        command.args(args);
        Self::spawn_command(name, command, None, sink)
    }

    /// Starts `command` (inside `netns` if given: the process and everything it opens live
    /// there), naming it `name` in what it prints.
    pub fn spawn_command(
        name: &str,
        mut command: Command,
        netns: Option<&Netns>,
        sink: Option<LineSink>,
    ) -> std::io::Result<Self> {
        let exe = command.get_program().to_owned();
        command
            // Its own process group: a terminal's Ctrl-C reaches only the owner, which then
            // stops the roles in order (and can still read their final counters).
            .process_group(0)
            .env("RUST_LOG_STYLE", "never")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned = match netns {
            Some(netns) => netns.spawn(command),
            None => command.spawn(),
        };
        let mut child = spawned.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot start {}: {e}", Path::new(&exe).display()),
            )
        })?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            collect(name, out, lines.clone(), sink.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect(name, err, lines.clone(), sink);
        }
        Ok(Self {
            name: name.to_owned(),
            child,
            lines,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the process has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM and waits up to `grace` before SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id())
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

fn collect(
    name: &str,
    stream: impl Read + Send + 'static,
    lines: Arc<Mutex<Vec<String>>>,
    sink: Option<LineSink>,
) {
    let name = name.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(sink) = &sink {
                sink(&name, &line);
            }
            lines
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line);
        }
    });
}
