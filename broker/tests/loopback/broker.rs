//! The broker under test: the real `cutie` binary as a child process.
//!
//! [`Broker::start`] runs it on `127.0.0.1:0` with a fresh temporary data directory and
//! waits for the `cutie is listening` log line, which carries the port every shard shares.
//! Dropping a [`Broker`] sends SIGTERM and asserts that it exits 0 within [`TIMEOUT`], so
//! every test also checks a clean shutdown. When the test is already failing, the
//! broker's log is printed instead.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// How long any one condition may take before a test gives up. Generous: the suite runs
/// debug builds, in parallel, on small CI machines.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Poll interval of [`wait_until`]; it only bounds how late a met condition is seen.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Who uses the machine: brokers of ordinary tests share it; a test that loads the
/// machine on purpose ([`exclusive`]) has it alone, so timing-sensitive tests
/// (keep-alive) never run beside it.
#[derive(Debug, Default)]
struct Machine {
    /// Brokers started outside an exclusive hold and not yet dropped.
    shared: usize,
    /// An exclusive hold is in place.
    exclusive: bool,
}

static MACHINE: Mutex<Machine> = Mutex::new(Machine {
    shared: 0,
    exclusive: false,
});
static MACHINE_CHANGED: Condvar = Condvar::new();

fn machine() -> MutexGuard<'static, Machine> {
    MACHINE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A broker's share of the machine; released on drop.
#[derive(Debug)]
struct SharedHold;

impl SharedHold {
    /// Waits while a test has the machine alone.
    fn take() -> SharedHold {
        let mut machine = machine();
        while machine.exclusive {
            machine = MACHINE_CHANGED
                .wait(machine)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        machine.shared += 1;
        SharedHold
    }
}

impl Drop for SharedHold {
    fn drop(&mut self) {
        machine().shared -= 1;
        MACHINE_CHANGED.notify_all();
    }
}

/// This test has the machine alone until dropped; its brokers start with
/// [`Exclusive::start`].
#[derive(Debug)]
pub struct Exclusive(());

/// Keeps new brokers from starting, waits until no other test has one, and holds the
/// machine for this test until the returned hold is dropped.
pub fn exclusive() -> Exclusive {
    let mut machine = machine();
    while machine.exclusive {
        machine = MACHINE_CHANGED
            .wait(machine)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
    }
    // From here new brokers wait, so the running ones are sure to finish.
    machine.exclusive = true;
    while machine.shared > 0 {
        machine = MACHINE_CHANGED
            .wait(machine)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
    }
    Exclusive(())
}

impl Exclusive {
    /// A broker with `shards` shards, under this exclusive hold.
    pub fn start(&self, shards: u16) -> Broker {
        Broker::launch(shards, &[], None)
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        machine().exclusive = false;
        MACHINE_CHANGED.notify_all();
    }
}

/// Waits until `condition` holds, or panics after [`TIMEOUT`] saying `what`.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {TIMEOUT:?} waiting for {what}"
        );
        thread::sleep(POLL_INTERVAL);
    }
}

/// A running `cutie` process.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    addr: SocketAddr,
    shards: u16,
    /// Every line the broker wrote to stderr (ANSI colours stripped), for failure reports.
    log: Arc<Mutex<Vec<String>>>,
    /// Set once the process has been reaped; the drop check then has nothing to do.
    exit_status: Option<ExitStatus>,
    /// Removed after the process is gone (fields drop after `Drop::drop` runs).
    _data_dir: tempfile::TempDir,
    /// Its share of the machine; `None` under [`Exclusive::start`]. Released after
    /// the process is gone.
    _hold: Option<SharedHold>,
}

impl Broker {
    /// A broker with `shards` shards and default limits.
    pub fn start(shards: u16) -> Broker {
        Broker::start_with(shards, &[])
    }

    /// A broker with `shards` shards and extra environment variables, e.g.
    /// `("CUTIE_LIMITS__CONNECT_TIMEOUT_SECS", "1")`. Waits while an [`exclusive`] test
    /// runs.
    pub fn start_with(shards: u16, env: &[(&str, &str)]) -> Broker {
        Broker::launch(shards, env, Some(SharedHold::take()))
    }

    fn launch(shards: u16, env: &[(&str, &str)], hold: Option<SharedHold>) -> Broker {
        let data_dir = tempfile::tempdir().expect("create a temporary data directory");
        let log_level = std::env::var("CUTIE_IT_LOG_LEVEL").unwrap_or_else(|_| "info".to_owned());
        let mut command = Command::new(env!("CARGO_BIN_EXE_cutie"));
        command
            .args(["--listen", "127.0.0.1:0", "--no-pin-cores"])
            .args(["--shards", &shards.to_string()])
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--log-level", &log_level])
            // No ./cutie.toml from wherever the tests were started.
            .current_dir(data_dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Only this test's configuration: nothing from the developer's environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CUTIE_") {
                command.env_remove(key);
            }
        }
        command
            .env("NO_COLOR", "1")
            // Parallel brokers must not fight over the admin endpoint's fixed port.
            .env("CUTIE_ADMIN__ENABLED", "false");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start the cutie binary");

        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (line_tx, line_rx) = mpsc::channel::<String>();
        {
            let log = log.clone();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let line = strip_ansi(&line);
                    log.lock().expect("log lock").push(line.clone());
                    // The receiver is gone once the address is known; keep recording.
                    let _ = line_tx.send(line);
                }
            });
        }

        let deadline = Instant::now() + TIMEOUT;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match line_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = listening_addr(&line) {
                        break addr;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait();
                    panic!(
                        "cutie did not log `cutie is listening` within {TIMEOUT:?} \
                         (exit: {status:?}); log:\n{}",
                        log.lock().expect("log lock").join("\n")
                    );
                }
            }
        };
        Broker {
            child,
            addr,
            shards,
            log,
            exit_status: None,
            _data_dir: data_dir,
            _hold: hold,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics if the process has exited.
    pub fn assert_running(&mut self) {
        let status = self.child.try_wait().expect("query the broker process");
        assert!(
            status.is_none(),
            "the broker died ({status:?}); log:\n{}",
            self.log_text()
        );
    }

    /// Resident memory of the process now, from `/proc/<pid>/status` (`VmRSS`).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status of the broker");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line in /proc/<pid>/status");
        kib * 1024
    }

    /// Sends SIGTERM and waits for the process to exit; panics if it does not within
    /// [`TIMEOUT`].
    pub fn terminate(&mut self) -> ExitStatus {
        match self.stop() {
            Some(status) => status,
            None => panic!(
                "the broker did not exit within {TIMEOUT:?} of SIGTERM; log:\n{}",
                self.log_text()
            ),
        }
    }

    /// Everything the broker logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// SIGTERM, then wait; SIGKILL and `None` if it does not exit in time.
    fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.exit_status {
            return Some(status);
        }
        if let Some(status) = self.child.try_wait().expect("query the broker process") {
            self.exit_status = Some(status);
            return Some(status);
        }
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child, which has not been reaped (try_wait above),
        // so the pid cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the broker") {
                self.exit_status = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let already_stopped = self.exit_status.is_some();
        let status = self.stop();
        if thread::panicking() {
            eprintln!(
                "--- broker log ({} shard(s), {}) ---\n{}\n--- end of broker log ---",
                self.shards,
                self.addr,
                self.log_text()
            );
            return;
        }
        if already_stopped {
            return;
        }
        match status {
            Some(status) => assert!(
                status.success(),
                "the broker exited with {status} after SIGTERM; log:\n{}",
                self.log_text()
            ),
            None => panic!(
                "the broker did not exit within {TIMEOUT:?} of SIGTERM; log:\n{}",
                self.log_text()
            ),
        }
    }
}

/// The address in a `cutie is listening ... listen=127.0.0.1:PORT ...` line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("cutie is listening") {
        return None;
    }
    let rest = &line[line.find("listen=")? + "listen=".len()..];
    let addr = rest.split_whitespace().next()?;
    Some(
        addr.parse()
            .unwrap_or_else(|e| panic!("bad address {addr:?} in {line:?}: {e}")),
    )
}

/// `line` without ANSI escape sequences (`ESC [ ... letter`), in case colours are on.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
