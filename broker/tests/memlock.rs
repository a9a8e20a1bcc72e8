//! The broker starts and serves with several shards under the common 8 MiB
//! `ulimit -l`, as a non-root user (root is not limited, so CI as root would not notice).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MEMLOCK_BYTES: &str = "8388608";

/// Kills the broker if the test fails early: io_uring's locked memory is accounted per
/// user, so a stray broker would starve the next run.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn eight_shards_start_without_io_memory_registration_failures_under_8_mib_memlock() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let binary = env!("CARGO_BIN_EXE_cutie");
    let mut command = Command::new("prlimit");
    command.arg(format!("--memlock={MEMLOCK_BYTES}:{MEMLOCK_BYTES}"));
    command.arg("--");
    if is_root() {
        // Drop to an unprivileged user: the limit does not apply to root.
        let status = Command::new("chown")
            .args(["nobody", data_dir.path().to_str().expect("utf-8 temp path")])
            .status()
            .expect("chown runs");
        assert!(status.success(), "chown the data dir to nobody");
        command.args([
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
        ]);
    }
    command
        .arg(binary)
        .args(["--listen", "127.0.0.1:0", "--shards", "8", "--no-pin-cores"])
        .arg("--data-dir")
        .arg(data_dir.path())
        .args(["--log-level", "info,glommio=info"])
        .env_remove("CUTIE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = KillOnDrop(command.spawn().expect("prlimit and the broker start"));
    let stderr = child.0.stderr.take().expect("piped stderr");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = Vec::new();
    let port = loop {
        let line = lines_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("broker did not start; log so far:\n{}", log.join("\n")));
        log.push(line.clone());
        if let Some(rest) = line.split("listen=127.0.0.1:").nth(1) {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            break digits.parse::<u16>().expect("port in the log line");
        }
    };

    // A real MQTT exchange: CONNECT (3.1.1, clean session) -> CONNACK accepted.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let body = b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x07memlock";
    let mut connect = vec![0x10, body.len() as u8];
    connect.extend_from_slice(body);
    stream.write_all(&connect).expect("send CONNECT");
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).expect("CONNACK");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);

    // Collect anything logged meanwhile, then stop the broker.
    // SAFETY: kill with a valid pid of our child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = child.0.wait().expect("broker exits");
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(500)) {
        log.push(line);
    }
    let log = log.join("\n");
    assert!(
        !log.contains("registering buffers"),
        "glommio failed to register io memory:\n{log}"
    );
    assert!(status.success(), "exit status {status:?}\n{log}");
}

#[test]
fn a_broker_whose_shards_cannot_start_exits_with_code_3_and_says_why() {
    // 64 KiB of locked memory is too little for any executor's rings: the shards fail,
    // and the process must fail with them instead of listening and serving nothing.
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new("prlimit");
    command.arg("--memlock=65536:65536").arg("--");
    if is_root() {
        let status = Command::new("chown")
            .args(["nobody", data_dir.path().to_str().expect("utf-8 temp path")])
            .status()
            .expect("chown runs");
        assert!(status.success(), "chown the data dir to nobody");
        command.args([
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
        ]);
    }
    let output = command
        .arg(env!("CARGO_BIN_EXE_cutie"))
        .args(["--listen", "127.0.0.1:0", "--shards", "2", "--no-pin-cores"])
        .arg("--data-dir")
        .arg(data_dir.path())
        .env("CUTIE_ADMIN__ENABLED", "false")
        .env_remove("CUTIE_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("prlimit and the broker run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("did not start"), "{stderr}");
    assert!(!stderr.contains("cutie is listening"), "{stderr}");
}
