//! Authentication and authorization: who may connect, and what each client may
//! publish and subscribe to. Pure library code: files are read once at start-up (off
//! the shard threads); the checks take plain strings and touch no I/O.
//!
//! - [`hash`]: one password hash in Mosquitto's formats (`$7$` PBKDF2-SHA512, `$6$`
//!   SHA-512); what verifying one costs.
//! - [`password`]: [`PasswordFile`], Mosquitto's `password_file` (`user:hash` lines).
//! - [`env`]: [`EnvUsers`], users defined by `CUTIE_USER_<NAME>` environment variables.
//! - [`acl`]: [`acl::Acl`], Mosquitto's `acl_file` (`user`, `topic`, `pattern` lines),
//!   and the per-client view [`acl::ClientAcl`] that a connection keeps.
//! - [`Users`] (here): the password file and the environment users as one set of
//!   credentials, checked with one verification whoever asks.

// The connection path uses this module through `crate::access`; a few helpers
// (`check_receive`, counts, `contains`) serve only the tests and `cutie passwd`.
#![allow(dead_code)]

pub mod acl;
pub mod env;
pub mod hash;
pub mod password;

use std::collections::HashMap;
use std::path::PathBuf;

pub use env::EnvUsers;
pub use hash::PasswordHash;
pub use password::PasswordFile;

/// The largest password or ACL file read: far more than any real one, small enough that
/// a wrong path (a log, a device) fails fast instead of filling memory.
pub const FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// The longest user name, client id or topic: an MQTT UTF-8 string's limit.
pub const STRING_BYTES_MAX: usize = 65_535;

/// A line of a password or ACL file that could not be used, without the file's name:
/// what [`PasswordFile::parse`] and [`acl::Acl::parse`] return.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it, naming the offending word but never a password or hash.
    pub reason: String,
}

/// Why credentials or an ACL could not be loaded. Every variant names where the bad
/// input came from.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read (missing, unreadable, not UTF-8, too large).
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        /// "password file" or "ACL file".
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// A line of the file is wrong.
    #[error("{path}:{line}: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// A `CUTIE_USER_*` variable is wrong.
    #[error("environment variable {name}: {reason}")]
    Env { name: String, reason: String },
    /// A user is defined both in the password file and in the environment.
    #[error(
        "user '{user}' is defined twice: in environment variable {env_name} and on line \
         {line} of the password file"
    )]
    Conflict {
        user: String,
        env_name: String,
        line: usize,
    },
}

/// Reads a whole text file of at most [`FILE_BYTES_MAX`] bytes.
fn read_text(what: &'static str, path: &std::path::Path) -> Result<String, AuthError> {
    use std::io::Read as _;
    let error = |reason: String| AuthError::Read {
        what,
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| error(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| error(e.to_string()))?;
    if bytes.len() as u64 > FILE_BYTES_MAX {
        return Err(error(format!("larger than {FILE_BYTES_MAX} bytes")));
    }
    String::from_utf8(bytes).map_err(|e| {
        error(format!(
            "not UTF-8 (first bad byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Everyone who may connect with a user name and password: the password file and the
/// environment users, which must not name the same user.
#[derive(Debug, Default)]
pub struct Users {
    /// User name -> hash. Environment users' plain passwords were hashed when read.
    users: HashMap<String, PasswordHash>,
}

impl Users {
    /// Merges the two sources; a user in both is an error rather than a silent choice.
    pub fn new(file: Option<PasswordFile>, env: EnvUsers) -> Result<Self, AuthError> {
        let mut users = file.map(PasswordFile::into_map).unwrap_or_default();
        for (user, (env_name, hash)) in env.into_map() {
            if let Some((line, _)) = users.get(&user) {
                return Err(AuthError::Conflict {
                    line: *line,
                    user,
                    env_name,
                });
            }
            users.insert(user, (0, hash));
        }
        Ok(Users {
            users: users
                .into_iter()
                .map(|(user, (_, hash))| (user, hash))
                .collect(),
        })
    }

    /// Whether `password` is `user`'s. Costs one hash verification whether or not the
    /// user exists (a user's own hash may ask for more or fewer iterations than the
    /// default that an unknown user costs).
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(hash) => hash.verify(password),
            None => hash::verify_dummy(password),
        }
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are none (then every user name is refused).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvUsers {
        EnvUsers::from_env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    #[test]
    fn users_from_file_and_environment_verify_together() {
        let hash = PasswordHash::with_salt(b"filepass", [7; hash::SALT_BYTES], 10);
        let file = PasswordFile::parse(&format!("alice:{hash}\n")).unwrap();
        let users = Users::new(Some(file), env(&[("CUTIE_USER_BOB", "envpass")])).unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.verify("alice", b"filepass"));
        assert!(users.verify("bob", b"envpass"));
        assert!(!users.verify("alice", b"envpass"));
        assert!(!users.verify("bob", b"filepass"));
        assert!(!users.verify("carol", b"filepass"), "unknown user");
    }

    #[test]
    fn a_user_in_both_file_and_environment_is_an_error_naming_both() {
        let hash = PasswordHash::with_salt(b"x", [7; hash::SALT_BYTES], 10);
        let file = PasswordFile::parse(&format!("# users\nalice:{hash}\n")).unwrap();
        let error = Users::new(Some(file), env(&[("CUTIE_USER_ALICE", "y")])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "user 'alice' is defined twice: in environment variable CUTIE_USER_ALICE and on \
             line 2 of the password file"
        );
    }

    #[test]
    fn no_users_refuses_everyone() {
        let users = Users::new(None, EnvUsers::default()).unwrap();
        assert!(users.is_empty());
        assert!(!users.verify("", b""));
    }

    #[test]
    fn reading_a_missing_file_names_it() {
        let error = read_text("password file", std::path::Path::new("/no/such/file")).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("cannot read password file /no/such/file: "),
            "{message}"
        );
    }

    #[test]
    fn reading_a_non_utf8_file_names_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad");
        std::fs::write(&path, b"ok\n\xff").unwrap();
        let message = read_text("ACL file", &path).unwrap_err().to_string();
        assert!(
            message.ends_with("not UTF-8 (first bad byte at offset 3)"),
            "{message}"
        );
    }
}
