//! `cutie passwd` and the password-file parser against the real Mosquitto tools:
//!
//! - the built `cutie passwd` creates, updates and deletes users, keeps other lines,
//!   writes mode 0600, prompts on standard input, prompts on a terminal (a pseudo-
//!   terminal here) without echoing the password, and refuses bad command lines;
//! - files written by `mosquitto_passwd` (`$7$` and `$6$`) verify with our parser;
//! - a real Mosquitto broker (`allow_anonymous false`, `password_file` written by
//!   `cutie passwd`) accepts `mosquitto_pub` with the right password and refuses a wrong
//!   one, an unknown user and an anonymous client.
//!
//! The Mosquitto parts are skipped, with a note on stderr, where the tools are not
//! installed, and fail under CI (`common/prerequisite.rs`); `scripts/test-all` installs
//! them.

#![allow(clippy::unwrap_used)]

// The parser under test, compiled into this test crate (the broker is a binary crate).
#[path = "../src/auth/mod.rs"]
mod auth;
#[allow(dead_code)]
#[path = "common/prerequisite.rs"]
mod prerequisite;

use std::ffi::OsStr;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use auth::PasswordFile;
use prerequisite::{find_tool, require_tool};

const CUTIE: &str = env!("CARGO_BIN_EXE_cutie");

/// How long a child process may take before the test gives up on it.
const CHILD_TIMEOUT: Duration = Duration::from_secs(20);

/// A child process killed (and reaped) when the test ends, pass or fail.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a command to completion with `stdin` as its input, killing it after
/// [`CHILD_TIMEOUT`].
fn run(program: impl AsRef<OsStr>, args: &[&str], stdin: &[u8]) -> Output {
    let program = program.as_ref();
    let mut child = KillOnDrop(
        Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program:?}: {e}")),
    );
    let mut input = child.0.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{program:?} {args:?} did not finish"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    // The outputs are small: the pipes held them while the child ran.
    let read_all = |pipe: Option<&mut dyn std::io::Read>| {
        let mut bytes = Vec::new();
        if let Some(pipe) = pipe {
            pipe.read_to_end(&mut bytes).unwrap();
        }
        bytes
    };
    Output {
        status,
        stdout: read_all(child.0.stdout.as_mut().map(|p| p as &mut dyn std::io::Read)),
        stderr: read_all(child.0.stderr.as_mut().map(|p| p as &mut dyn std::io::Read)),
    }
}

fn cutie_passwd(args: &[&str]) -> Output {
    cutie_passwd_with_input(args, b"")
}

fn cutie_passwd_with_input(args: &[&str], stdin: &[u8]) -> Output {
    let mut all = vec!["passwd"];
    all.extend_from_slice(args);
    run(CUTIE, &all, stdin)
}

fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn batch_mode_creates_a_0600_file_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let output = cutie_passwd(&["-c", "-b", path_str(&file), "alice", "s3cret: with blanks"]);
    assert_success(&output, "cutie passwd -c -b");

    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("alice:$7$4096$"), "{text}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let users = PasswordFile::load(&file).unwrap();
    assert!(users.verify("alice", b"s3cret: with blanks"));
    assert!(!users.verify("alice", b"s3cret"));
}

#[test]
fn updates_keep_other_lines_and_delete_removes_one_user() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let f = path_str(&file);
    assert_success(&cutie_passwd(&["-c", "-b", f, "alice", "one"]), "create");
    // A comment added by hand stays.
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.insert_str(0, "# managed by hand too\n");
    std::fs::write(&file, &text).unwrap();
    assert_success(&cutie_passwd(&["-b", f, "bob", "two"]), "add bob");
    assert_success(&cutie_passwd(&["-b", f, "alice", "three"]), "change alice");

    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], "# managed by hand too");
    assert!(
        lines[1].starts_with("alice:") && lines[2].starts_with("bob:"),
        "{text}"
    );
    let users = PasswordFile::load(&file).unwrap();
    assert!(users.verify("alice", b"three") && !users.verify("alice", b"one"));
    assert!(users.verify("bob", b"two"));

    assert_success(&cutie_passwd(&["-D", f, "alice"]), "delete alice");
    let users = PasswordFile::load(&file).unwrap();
    assert!(!users.contains("alice") && users.verify("bob", b"two"));
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .starts_with("# managed by hand too\n"));

    let output = cutie_passwd(&["-D", f, "alice"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("user 'alice' not found"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn prompts_twice_on_standard_input() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let f = path_str(&file);
    let output = cutie_passwd_with_input(&["-c", f, "carol"], b"typed pw\ntyped pw\n");
    assert_success(&output, "prompted create");
    assert!(
        stderr(&output).contains("Password: "),
        "{}",
        stderr(&output)
    );
    assert!(PasswordFile::load(&file)
        .unwrap()
        .verify("carol", b"typed pw"));

    let before = std::fs::read_to_string(&file).unwrap();
    let output = cutie_passwd_with_input(&[f, "carol"], b"first\nsecond\n");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("passwords do not match"),
        "{}",
        stderr(&output)
    );
    let output = cutie_passwd_with_input(&[f, "carol"], b"only one line\n");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("end of input"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        before,
        "file untouched"
    );
}

/// `cutie passwd` with a pseudo-terminal as its controlling terminal and standard input,
/// output and error: the password typed after each prompt is never echoed.
#[test]
fn prompts_on_a_terminal_without_echo() {
    use std::io::Read as _;
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    use std::os::unix::process::CommandExt as _;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let (mut master, slave) = {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two new descriptors, which we then own.
        let opened = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened and are owned by nobody else.
        unsafe {
            (
                std::fs::File::from(OwnedFd::from_raw_fd(master)),
                OwnedFd::from_raw_fd(slave),
            )
        }
    };
    let mut command = Command::new(CUTIE);
    command
        .args(["passwd", "-c", path_str(&file), "erin"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    // SAFETY: only async-signal-safe calls between fork and exec: a new session whose
    // controlling terminal is the pseudo-terminal (standard input by now), so that
    // /dev/tty is it.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = KillOnDrop(command.spawn().unwrap());
    drop(slave);

    // The terminal's output, read on a thread of its own (it ends with EIO once the child
    // has closed its side).
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let mut reader = master.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 1024];
        while let Ok(n) = reader.read(&mut buffer) {
            if n == 0 || tx.send(buffer[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut transcript = Vec::new();
    let wait_for = |text: &str, transcript: &mut Vec<u8>| {
        let deadline = Instant::now() + CHILD_TIMEOUT;
        while !String::from_utf8_lossy(transcript).contains(text) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => transcript.extend(chunk),
                Err(_) => panic!(
                    "no {text:?} on the terminal: {:?}",
                    String::from_utf8_lossy(transcript)
                ),
            }
        }
    };
    // The prompt comes before the program turns echo off (as a person would type after
    // it): wait for both, as the terminal's settings show them.
    let echo_off = |master: &std::fs::File| {
        let deadline = Instant::now() + CHILD_TIMEOUT;
        loop {
            // SAFETY: tcgetattr fills a zeroed termios from an open pseudo-terminal fd.
            let echo = unsafe {
                let mut termios: libc::termios = std::mem::zeroed();
                assert_eq!(libc::tcgetattr(master.as_raw_fd(), &mut termios), 0);
                termios.c_lflag & libc::ECHO != 0
            };
            if !echo {
                return;
            }
            assert!(Instant::now() < deadline, "echo was never turned off");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for("Password: ", &mut transcript);
    echo_off(&master);
    master.write_all(b"tty secret\n").unwrap();
    wait_for("Reenter password: ", &mut transcript);
    echo_off(&master);
    master.write_all(b"tty secret\n").unwrap();
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "cutie passwd did not finish");
        std::thread::sleep(Duration::from_millis(10));
    };
    while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
        transcript.extend(chunk);
    }
    let transcript = String::from_utf8_lossy(&transcript).into_owned();
    assert!(status.success(), "{status}: {transcript:?}");
    assert!(!transcript.contains("secret"), "echoed: {transcript:?}");
    assert!(PasswordFile::load(&file)
        .unwrap()
        .verify("erin", b"tty secret"));
}

#[test]
fn bad_command_lines_and_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let f = path_str(&file);
    let code = |args: &[&str]| cutie_passwd(args).status.code();
    assert_eq!(code(&["-b", f, "alice"]), Some(2), "-b without a password");
    assert_eq!(
        code(&["-c", f, "alice", "pw"]),
        Some(2),
        "a password without -b"
    );
    assert_eq!(code(&["-D", "-c", f, "alice"]), Some(2));
    assert_eq!(
        code(&["-b", f, "alice", "pw"]),
        Some(1),
        "no file and no -c"
    );
    assert_eq!(
        code(&["-c", "-b", f, "a:b", "pw"]),
        Some(1),
        "':' in a user name"
    );
    assert_eq!(
        code(&["-c", "-b", f, "alice", ""]),
        Some(1),
        "empty password"
    );
    assert!(!file.exists());
    assert_eq!(code(&["--help"]), Some(0));
}

#[test]
fn files_written_by_mosquitto_passwd_verify_with_our_parser() {
    let Some(mosquitto_passwd) = require_tool("mosquitto_passwd", "mosquitto") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let f = path_str(&file);
    let ok = |args: &[&str]| assert_success(&run(&mosquitto_passwd, args, b""), "mosquitto_passwd");
    ok(&["-c", "-b", f, "alice", "pbkdf2 pw"]);
    ok(&["-b", "-H", "sha512", f, "bob", "sha512 pw"]);
    ok(&["-b", f, "Carol", "p:ss"]);

    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("alice:$7$") && text.contains("bob:$6$"),
        "{text}"
    );
    let users = PasswordFile::load(&file).unwrap();
    assert_eq!(users.len(), 3);
    assert!(users.verify("alice", b"pbkdf2 pw"));
    assert!(users.verify("bob", b"sha512 pw"));
    assert!(users.verify("Carol", b"p:ss"));
    assert!(!users.verify("alice", b"sha512 pw"));
    assert!(!users.verify("carol", b"p:ss"));

    // And `cutie passwd` edits a Mosquitto file without disturbing its other users.
    assert_success(&cutie_passwd(&["-b", f, "dave", "cutie pw"]), "cutie adds");
    let users = PasswordFile::load(&file).unwrap();
    assert!(users.verify("alice", b"pbkdf2 pw") && users.verify("dave", b"cutie pw"));
}

/// Mosquitto's stdout and stderr, in the test's temporary directory.
const MOSQUITTO_LOG: &str = "mosquitto.log";

/// A Mosquitto broker on an ephemeral loopback port, killed on drop.
struct Mosquitto {
    port: u16,
    _child: KillOnDrop,
}

impl Mosquitto {
    fn start(program: &Path, dir: &Path, password_file: &Path) -> Mosquitto {
        // Bind port 0 to have the kernel pick a free port, then hand it to Mosquitto.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\n\
                 allow_anonymous false\n\
                 password_file {}\n\
                 persistence false\n\
                 # Run as root (as in CI), Mosquitto would switch to the 'mosquitto' user\n\
                 # and could not read a 0600 file in a 0700 directory.\n\
                 user root\n",
                password_file.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join(MOSQUITTO_LOG)).unwrap();
        let mut child = KillOnDrop(
            Command::new(program)
                .arg("-c")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + CHILD_TIMEOUT;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Some(status) = child.0.try_wait().unwrap() {
                panic!("mosquitto exited ({status}): {}", read_logs(dir));
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen: {}",
                read_logs(dir)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            port,
            _child: child,
        }
    }

    /// Publishes one message as `user`/`password` (anonymously with `None`).
    fn publish(&self, credentials: Option<(&str, &str)>) -> (ExitStatus, String) {
        let port = self.port.to_string();
        let mut args = vec![
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "auth/test",
            "-m",
            "hi",
            "-q",
            "1",
        ];
        if let Some((user, password)) = credentials {
            args.extend(["-u", user, "-P", password]);
        }
        let Some(mosquitto_pub) = find_tool("mosquitto_pub") else {
            panic!("mosquitto_pub disappeared");
        };
        let output = run(mosquitto_pub, &args, b"");
        (output.status, stderr(&output))
    }
}

fn read_logs(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(MOSQUITTO_LOG)).unwrap_or_default()
}

#[test]
fn mosquitto_accepts_a_password_file_written_by_cutie_passwd() {
    let (Some(mosquitto), Some(_), Some(mosquitto_passwd)) = (
        require_tool("mosquitto", "mosquitto"),
        require_tool("mosquitto_pub", "mosquitto-clients"),
        require_tool("mosquitto_passwd", "mosquitto"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let f = path_str(&file);
    assert_success(
        &cutie_passwd(&["-c", "-b", f, "alice", "alice's pw"]),
        "cutie",
    );
    // mosquitto_passwd reads our file and adds its own user next to ours.
    assert_success(
        &run(&mosquitto_passwd, &["-b", f, "bob", "bob pw"], b""),
        "mosquitto_passwd",
    );
    assert!(PasswordFile::load(&file).unwrap().verify("bob", b"bob pw"));

    let broker = Mosquitto::start(&mosquitto, dir.path(), &file);
    let (status, err) = broker.publish(Some(("alice", "alice's pw")));
    assert!(
        status.success(),
        "right password refused: {err}\n{}",
        read_logs(dir.path())
    );
    let (status, err) = broker.publish(Some(("bob", "bob pw")));
    assert!(status.success(), "mosquitto_passwd's user refused: {err}");

    for (credentials, what) in [
        (Some(("alice", "wrong")), "wrong password"),
        (Some(("alice", "alice's p")), "prefix of the password"),
        (Some(("mallory", "alice's pw")), "unknown user"),
        (None, "anonymous"),
    ] {
        let (status, err) = broker.publish(credentials);
        assert!(!status.success(), "{what} accepted");
        assert!(err.contains("not authorised"), "{what}: {err}");
    }
    let logs = read_logs(dir.path());
    assert!(logs.contains("u'alice'"), "{logs}");
}
