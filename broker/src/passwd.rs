//! `cutie passwd`: add, change or delete a user in a password file, like
//! `mosquitto_passwd` (and the files work with both brokers).
//!
//! ```text
//! cutie passwd [-c] FILE USER              prompt for the password twice, without echo
//! cutie passwd -b [-c] FILE USER PASSWORD  batch: the password from the command line
//! cutie passwd -D FILE USER                delete USER
//! ```
//!
//! `-c` creates the file, replacing an existing one. Otherwise the file must exist, and
//! every other line (other users, comments) is kept as it was. The new file is written
//! next to the old one, synced and renamed over it, then the directory is synced: a
//! crash leaves the old file or the new one, never half of one. It gets mode 0600, and
//! the owner and group of the file it replaces (so a broker running as another user can
//! still read it).
//!
//! The hash is PBKDF2-SHA512 in Mosquitto's `$7$` format ([`crate::auth::hash`]). When
//! standard input is a terminal the prompt and the typing happen on the controlling
//! terminal with echo off (`rpassword`, which restores the terminal after); when it is
//! not, the two password lines are read from it as they come
//! (`printf 'pw\npw\n' | cutie passwd FILE USER`).
//!
//! Exit codes: 0 done, 1 failed (the message says why), 2 bad command line.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use crate::auth::password::{check_user_name, line_user};
use crate::auth::{PasswordHash, STRING_BYTES_MAX};

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// The command line of `cutie passwd`, after the word `passwd`.
#[derive(Debug, Parser)]
#[command(
    name = "cutie passwd",
    about = "Add, change or delete a user in a password file (mosquitto_passwd compatible)",
    disable_version_flag = true
)]
struct Args {
    /// Create FILE, replacing it if it exists.
    #[arg(short = 'c', conflicts_with = "delete")]
    create: bool,
    /// Batch mode: take PASSWORD from the command line instead of prompting.
    #[arg(short = 'b', requires = "password", conflicts_with = "delete")]
    batch: bool,
    /// Delete USER from FILE.
    #[arg(short = 'D')]
    delete: bool,
    /// The password file.
    file: PathBuf,
    /// The user name (no ':', no control characters).
    user: String,
    /// The password, with -b only.
    password: Option<OsString>,
}

/// What to do to the user's line.
#[derive(Debug)]
enum Change<'a> {
    Set(&'a PasswordHash),
    Delete,
}

/// Runs `cutie passwd`; `args` are the arguments after `passwd`.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let argv = std::iter::once(OsString::from("cutie passwd")).chain(args);
    let args = match Args::try_parse_from(argv) {
        Ok(args) => args,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if args.password.is_some() && !args.batch {
        eprintln!("cutie passwd: a password on the command line needs -b");
        return ExitCode::from(EXIT_USAGE);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cutie passwd: {message}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    check_user_name(&args.user)?;
    if args.delete {
        return update_file(&args.file, &args.user, Change::Delete, false);
    }
    let password = match &args.password {
        Some(password) => password.as_bytes().to_vec(),
        None => prompt_password()?,
    };
    if password.is_empty() {
        return Err("empty password".to_owned());
    }
    if password.len() > STRING_BYTES_MAX {
        return Err(format!("password longer than {STRING_BYTES_MAX} bytes"));
    }
    let hash = PasswordHash::new(&password).map_err(|e| e.to_string())?;
    update_file(&args.file, &args.user, Change::Set(&hash), args.create)
}

fn update_file(path: &Path, user: &str, change: Change<'_>, create: bool) -> Result<(), String> {
    let text = if create {
        String::new()
    } else {
        match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("{} does not exist (-c creates it)", path.display()));
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
    };
    let text = edit(&text, user, change).map_err(|e| format!("{}: {e}", path.display()))?;
    write_atomically(path, text.as_bytes())
}

/// The file's text with `user`'s line set or removed; every other line is kept.
fn edit(text: &str, user: &str, change: Change<'_>) -> Result<String, String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let found: Vec<usize> = (0..lines.len())
        .filter(|&i| line_user(&lines[i]) == Some(user))
        .collect();
    if let [first, second, ..] = found[..] {
        return Err(format!(
            "user '{user}' is on lines {} and {}: fix the file by hand",
            first + 1,
            second + 1
        ));
    }
    match (change, found.first()) {
        (Change::Set(hash), Some(&at)) => lines[at] = format!("{user}:{hash}"),
        (Change::Set(hash), None) => lines.push(format!("{user}:{hash}")),
        (Change::Delete, Some(&at)) => {
            lines.remove(at);
        }
        (Change::Delete, None) => return Err(format!("user '{user}' not found")),
    }
    let mut out = String::with_capacity(text.len() + 200);
    for line in lines {
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// Replaces `path` with `bytes`: a temporary file in the same directory, synced, renamed
/// over `path`, then the directory synced.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let file_name = path
        .file_name()
        .ok_or_else(|| format!("{} is not a file name", path.display()))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut tmp_name = OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    // The owner and group of the file being replaced, to keep.
    let owner = fs::metadata(path).ok().map(|m| (m.uid(), m.gid()));

    let write = || -> Result<(), String> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        if let Some((uid, gid)) = owner {
            let ours = fs::metadata(&tmp).map(|m| (m.uid(), m.gid())).ok();
            if ours != Some((uid, gid)) {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|e| {
                    format!(
                        "cannot give {} the owner of {} ({uid}:{gid}): {e}",
                        tmp.display(),
                        path.display()
                    )
                })?;
            }
        }
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        fs::rename(&tmp, path)
            .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))
    };
    if let Err(message) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(message);
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| {
        format!(
            "{} written, but syncing {} failed: {e}",
            path.display(),
            dir.display()
        )
    })
}

/// Reads the password twice: from the terminal without echo (rpassword) when standard
/// input is one, else as two lines of standard input.
fn prompt_password() -> Result<Vec<u8>, String> {
    let terminal = std::io::stdin().is_terminal();
    let first = read_secret("Password: ", terminal)?;
    let second = read_secret("Reenter password: ", terminal)?;
    if first != second {
        return Err("passwords do not match".to_owned());
    }
    Ok(first)
}

fn read_secret(prompt: &str, terminal: bool) -> Result<Vec<u8>, String> {
    const END_OF_INPUT: &str = "no password given (end of input)";
    if terminal {
        // On the controlling terminal (/dev/tty), echo off while it is typed.
        return match rpassword::prompt_password(prompt) {
            Ok(password) => Ok(password.into_bytes()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(END_OF_INPUT.to_owned()),
            Err(e) => Err(format!("cannot read the password: {e}")),
        };
    }
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut line = Vec::new();
    std::io::stdin()
        .lock()
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    if line.is_empty() {
        return Err(END_OF_INPUT.to_owned());
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::auth::hash::SALT_BYTES;
    use crate::auth::PasswordFile;

    fn hash(password: &str) -> PasswordHash {
        PasswordHash::with_salt(password.as_bytes(), [5; SALT_BYTES], 10)
    }

    #[test]
    fn setting_a_new_user_appends_and_keeps_other_lines() {
        let old = format!("# users\nbob:{}\n\n", hash("b"));
        let new = edit(&old, "alice", Change::Set(&hash("a"))).unwrap();
        assert_eq!(
            new,
            format!("# users\nbob:{}\n\nalice:{}\n", hash("b"), hash("a"))
        );
        let file = PasswordFile::parse(&new).unwrap();
        assert!(file.verify("alice", b"a") && file.verify("bob", b"b"));
    }

    #[test]
    fn setting_an_existing_user_replaces_its_line_in_place() {
        let old = format!("alice:{}\n# middle\nbob:{}", hash("old"), hash("b"));
        let new = edit(&old, "alice", Change::Set(&hash("new"))).unwrap();
        assert_eq!(
            new,
            format!("alice:{}\n# middle\nbob:{}\n", hash("new"), hash("b"))
        );
    }

    #[test]
    fn deleting_removes_only_that_user() {
        let old = format!("alice:{}\nbob:{}\n", hash("a"), hash("b"));
        let new = edit(&old, "alice", Change::Delete).unwrap();
        assert_eq!(new, format!("bob:{}\n", hash("b")));
        assert_eq!(
            edit(&new, "alice", Change::Delete).unwrap_err(),
            "user 'alice' not found"
        );
    }

    #[test]
    fn a_user_on_two_lines_is_left_for_a_person_to_fix() {
        let old = format!("alice:{}\nalice:{}\n", hash("a"), hash("b"));
        assert_eq!(
            edit(&old, "alice", Change::Set(&hash("c"))).unwrap_err(),
            "user 'alice' is on lines 1 and 2: fix the file by hand"
        );
    }

    #[test]
    fn commented_out_user_lines_are_not_the_user() {
        let old = format!("#alice:{}\n", hash("a"));
        let new = edit(&old, "alice", Change::Set(&hash("b"))).unwrap();
        assert_eq!(new, format!("#alice:{}\nalice:{}\n", hash("a"), hash("b")));
    }

    #[test]
    fn atomic_write_replaces_the_file_with_mode_0600_and_leaves_no_temporary() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(&path, "old\n").unwrap();
        write_atomically(&path, b"new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["passwd"]);
    }

    #[test]
    fn updating_a_missing_file_without_create_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none");
        let message = update_file(&path, "u", Change::Delete, false).unwrap_err();
        assert!(
            message.ends_with("does not exist (-c creates it)"),
            "{message}"
        );
    }

    #[test]
    fn command_line_flags_parse_like_mosquitto_passwd() {
        let parse = |args: &[&str]| {
            Args::try_parse_from(std::iter::once("cutie passwd").chain(args.iter().copied()))
        };
        let args = parse(&["-c", "-b", "f", "u", "p"]).unwrap();
        assert!(args.create && args.batch && !args.delete);
        assert_eq!(args.password.as_deref(), Some(std::ffi::OsStr::new("p")));
        let args = parse(&["-D", "f", "u"]).unwrap();
        assert!(args.delete && args.password.is_none());
        assert!(parse(&["-b", "f", "u"]).is_err(), "-b needs a password");
        assert!(parse(&["-D", "-c", "f", "u"]).is_err());
        assert!(parse(&["-D", "-b", "f", "u", "p"]).is_err());
        assert!(parse(&["f"]).is_err());
    }
}
