//! The broker under test: the real `cutie` binary as a child process.
//!
//! [`Broker::start`] runs it on `127.0.0.1:0` with a fresh temporary data directory and
//! waits for the `cutie is listening` log line, which carries the port every shard shares
//! (the shared [`Launch`]). Dropping a [`Broker`] sends SIGTERM and asserts that it exits
//! 0 within [`TIMEOUT`], so every test also checks a clean shutdown. When the test is
//! already failing, the broker's log is printed instead.

use crate::common::{self, Launch};
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::sync::{Condvar, Mutex, MutexGuard};
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
    cutie: common::Broker,
    /// [`Broker::terminate`] was called: the drop check then has nothing to do.
    terminated: bool,
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
        let log_level = std::env::var("CUTIE_IT_LOG_LEVEL").unwrap_or_else(|_| "info".to_owned());
        let cutie = Launch::temp()
            .shards(shards)
            .args(["--log-level", &log_level])
            .envs(env.iter().copied())
            .timeout(TIMEOUT)
            .start();
        Broker {
            cutie,
            terminated: false,
            _hold: hold,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.cutie.addr
    }

    /// The admin endpoint, when the environment enabled it.
    #[allow(dead_code)] // tests/admin.rs
    pub fn admin_addr(&self) -> SocketAddr {
        self.cutie.admin_addr()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.cutie.pid()
    }

    /// Panics if the process has exited.
    pub fn assert_running(&mut self) {
        self.cutie.assert_running();
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
        self.terminated = true;
        match self.cutie.terminate_within(TIMEOUT) {
            Some(status) => status,
            None => panic!(
                "the broker did not exit within {TIMEOUT:?} of SIGTERM; log:\n{}",
                self.log_text()
            ),
        }
    }

    /// Everything the broker logged so far.
    pub fn log_text(&self) -> String {
        self.cutie.log_text()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let status = self.cutie.terminate_within(TIMEOUT);
        // A failing test: the broker's log is printed when `cutie` drops.
        if thread::panicking() || self.terminated {
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
