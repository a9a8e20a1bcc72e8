//! Mosquitto's `password_file`: one `user:hash` per line.
//!
//! The format, as Mosquitto 2.x and `mosquitto_passwd` read and write it:
//!
//! ```text
//! # comment (a '#' first on the line; leading blanks are allowed here)
//! alice:$7$4096$<base64 salt>$<base64 hash>
//! bob:$6$<base64 salt>$<base64 hash>
//! ```
//!
//! The user name is everything before the first `:`, with surrounding blanks removed
//! (so it cannot contain `:`); the hash is everything after it (see [`super::hash`]).
//! Blank lines are skipped. Where Mosquitto skips a bad line with a log message, this
//! parser refuses the file and names the line: a user silently missing is worse than a
//! broker that does not start. A user listed twice is refused too (Mosquitto keeps one
//! of the two without saying which).

use std::collections::HashMap;
use std::path::Path;

use super::hash::{self, PasswordHash};
use super::{AuthError, LineError, STRING_BYTES_MAX};

/// The users of one password file. Built once at start-up; verification is read-only.
#[derive(Debug, Default)]
pub struct PasswordFile {
    /// User name -> (line it was defined on, its hash).
    users: HashMap<String, (usize, PasswordHash)>,
}

impl PasswordFile {
    /// Reads and parses the file at `path`; errors name the file and the line.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = super::read_text("password file", path)?;
        Self::parse(&text).map_err(|e| AuthError::Parse {
            path: path.to_owned(),
            line: e.line,
            reason: e.reason,
        })
    }

    /// Parses the text of a password file.
    pub fn parse(text: &str) -> Result<Self, LineError> {
        let mut users: HashMap<String, (usize, PasswordHash)> = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let error = |reason: String| LineError {
                line: line_number,
                reason,
            };
            let Some((user, hash)) = parse_line(line).map_err(error)? else {
                continue;
            };
            if let Some((first, _)) = users.get(&user) {
                return Err(error(format!(
                    "user '{user}' is already defined on line {first}"
                )));
            }
            users.insert(user, (line_number, hash));
        }
        Ok(PasswordFile { users })
    }

    /// Whether `password` is `user`'s password. Does the work of one verification
    /// whether or not the user exists (against a dummy hash at the default cost for an
    /// unknown user), and compares hashes in constant time.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some((_, hash)) => hash.verify(password),
            None => hash::verify_dummy(password),
        }
    }

    /// Whether the file defines `user`.
    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// The user names, in no particular order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// How many users the file defines.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file defines no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub(super) fn into_map(self) -> HashMap<String, (usize, PasswordHash)> {
        self.users
    }
}

/// The user name of a `user:hash` line, or `None` for a blank or comment line; used by
/// `cutie passwd` to find the line it replaces.
pub fn line_user(line: &str) -> Option<&str> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    line.split_once(':').map(|(user, _)| user.trim())
}

/// Checks a user name for a password file: not empty, no `:` (it ends the name), no
/// control characters (a newline would end the line), no blank at either end (they are
/// trimmed when read), no leading `#` (a comment), at most an MQTT string long.
pub fn check_user_name(user: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("empty user name".to_owned());
    }
    if user.len() > STRING_BYTES_MAX {
        return Err(format!("user name longer than {STRING_BYTES_MAX} bytes"));
    }
    if user.contains(':') {
        return Err("user name contains ':'".to_owned());
    }
    if user.chars().any(char::is_control) {
        return Err("user name contains a control character".to_owned());
    }
    if user.trim() != user {
        return Err("user name starts or ends with a blank".to_owned());
    }
    if user.starts_with('#') {
        return Err("user name starts with '#' (the line would be a comment)".to_owned());
    }
    Ok(())
}

fn parse_line(line: &str) -> Result<Option<(String, PasswordHash)>, String> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let Some((user, hash)) = trimmed.split_once(':') else {
        return Err("expected 'user:hash'".to_owned());
    };
    let user = user.trim();
    check_user_name(user)?;
    let hash = hash.trim();
    if hash.is_empty() {
        return Err(format!("user '{user}' has no password hash"));
    }
    let hash = PasswordHash::parse(hash).map_err(|e| format!("user '{user}': {e}"))?;
    Ok(Some((user.to_owned(), hash)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::auth::hash::SALT_BYTES;

    /// A cheap hash for tests (10 iterations: debug builds hash slowly).
    fn hash(password: &str) -> PasswordHash {
        PasswordHash::with_salt(password.as_bytes(), [3; SALT_BYTES], 10)
    }

    fn parse_err(text: &str) -> String {
        PasswordFile::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn users_verify_their_own_password_only() {
        let text = format!("alice:{}\nbob:{}\n", hash("a-pass"), hash("b-pass"));
        let file = PasswordFile::parse(&text).unwrap();
        assert_eq!(file.len(), 2);
        assert!(file.verify("alice", b"a-pass"));
        assert!(file.verify("bob", b"b-pass"));
        assert!(!file.verify("alice", b"b-pass"));
        assert!(
            !file.verify("Alice", b"a-pass"),
            "user names are case-sensitive"
        );
    }

    #[test]
    fn unknown_user_is_refused_through_the_dummy_hash() {
        let file = PasswordFile::parse(&format!("alice:{}\n", hash("pw"))).unwrap();
        assert!(!file.contains("mallory"));
        // Takes the `None` arm: one PBKDF2 at the default cost, then false.
        assert!(!file.verify("mallory", b"pw"));
        assert!(!file.verify("", b""));
    }

    #[test]
    fn comments_blank_lines_blanks_and_crlf_are_accepted() {
        let text = format!(
            "# users\n\n   \n  # indented comment\n alice : {} \r\nbob:{}",
            hash("a"),
            hash("b")
        );
        let file = PasswordFile::parse(&text).unwrap();
        let mut users: Vec<_> = file.users().collect();
        users.sort_unstable();
        assert_eq!(users, ["alice", "bob"]);
        assert!(file.verify("alice", b"a"));
        assert!(file.verify("bob", b"b"));
    }

    #[test]
    fn empty_file_has_no_users() {
        assert!(PasswordFile::parse("").unwrap().is_empty());
        assert!(PasswordFile::parse("# nobody\n").unwrap().is_empty());
    }

    #[test]
    fn line_without_a_colon_is_an_error_with_its_line_number() {
        let text = format!("alice:{}\n# ok\nbob\n", hash("a"));
        assert_eq!(parse_err(&text), "line 3: expected 'user:hash'");
    }

    #[test]
    fn bad_hash_is_an_error_naming_the_user_not_the_hash() {
        let message = parse_err("alice:$7$101$c2FsdA==$c2FsdA==\n");
        assert_eq!(
            message,
            "line 1: user 'alice': invalid salt (expected base64 of 12 bytes)"
        );
        assert_eq!(
            parse_err("\nbob:plaintext\n"),
            "line 2: user 'bob': unknown hash format (expected \
             $7$<iterations>$<salt>$<hash> or $6$<salt>$<hash>)"
        );
        assert_eq!(
            parse_err("carol:\n"),
            "line 1: user 'carol' has no password hash"
        );
        assert_eq!(parse_err(":$6$x$y\n"), "line 1: empty user name");
    }

    #[test]
    fn duplicate_user_is_an_error_naming_both_lines() {
        let text = format!(
            "alice:{}\nbob:{}\nalice:{}\n",
            hash("1"),
            hash("2"),
            hash("3")
        );
        assert_eq!(
            parse_err(&text),
            "line 3: user 'alice' is already defined on line 1"
        );
    }

    #[test]
    fn load_errors_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(&path, "# header\nnot a user line\n").unwrap();
        let message = PasswordFile::load(&path).unwrap_err().to_string();
        assert_eq!(
            message,
            format!("{}:2: expected 'user:hash'", path.display())
        );
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(&path, format!("alice:{}\n", hash("pw"))).unwrap();
        assert!(PasswordFile::load(&path).unwrap().verify("alice", b"pw"));
    }

    #[test]
    fn line_user_finds_the_name_of_user_lines_only() {
        assert_eq!(line_user(" alice :$7$..."), Some("alice"));
        assert_eq!(line_user("# alice:x"), None);
        assert_eq!(line_user("   "), None);
        assert_eq!(line_user("garbage"), None);
    }

    #[test]
    fn user_names_that_would_break_the_file_are_refused() {
        assert!(check_user_name("alice").is_ok());
        assert!(check_user_name("with space inside").is_ok());
        assert!(check_user_name("ünïcode").is_ok());
        for bad in [
            "",
            "a:b",
            "a\nb",
            "a\tb",
            " a",
            "a ",
            "#a",
            &"x".repeat(65_536),
        ] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
    }
}
