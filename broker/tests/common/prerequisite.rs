//! What a test needs from the machine (a program, root, a tmpfs mount) and what happens
//! when it is missing.
//!
//! On a developer's machine a test whose prerequisite is missing says so on stderr and
//! passes without checking anything: not everyone has Chromium or root. Under CI (`CI`
//! set to anything but empty, `0` or `false`; `.ci/run` sets `CI=true`) it fails and
//! names what is missing, so that a CI run never passes a test that did not run.
//! `scripts/test-all` installs every program the tests need.
//!
//! Usage: `let Some(path) = require_tool("mosquitto", "mosquitto") else { return; };`.

use std::path::PathBuf;

/// Whether this is a CI run: `CI` is set, and not to an empty string, `0` or `false`.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !matches!(value.trim(), "" | "0" | "false"))
}

/// `available`, after saying what is missing when it is not: a note on stderr
/// (`skipping`) outside CI, a panic naming `what` and `hint` under CI.
pub fn require(what: &str, available: bool, hint: &str) -> bool {
    if !available {
        assert!(
            !under_ci(),
            "{what} is missing, and under CI a missing prerequisite is a failure ({hint})"
        );
        eprintln!("NOTE: {what} is missing; skipping this test ({hint})");
    }
    available
}

/// The executable `name`, searched on `PATH` and in the usual system directories (where
/// `mosquitto` lives); `None`, after [`require`]'s note or panic, when there is none.
/// `package` is the Debian package that provides it.
pub fn require_tool(name: &str, package: &str) -> Option<PathBuf> {
    let found = find_tool(name);
    require(
        &format!("the program {name}"),
        found.is_some(),
        &format!("apt-get install {package}"),
    );
    found
}

/// Whether this process runs as root (needed to mount a tmpfs).
pub fn require_root(why: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    require("root", root, why)
}

/// Finds an executable on `PATH` or in the usual system directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
