//! Users defined in the environment: `CUTIE_USER_<NAME>=<password or hash>`.
//!
//! Mosquitto has no equivalent; EMQX and most container images have something like it.
//! It lets a container define a user or two without mounting a password file:
//!
//! ```sh
//! CUTIE_USER_SENSOR=s3cret                       # user "sensor", plain password
//! CUTIE_USER_ADMIN='$7$4096$<salt>$<hash>'       # user "admin", a `cutie passwd` hash
//! ```
//!
//! - The user name is the part after `CUTIE_USER_`, **lower-cased**: environment
//!   variable names are conventionally upper-case and user names lower-case. A user
//!   whose name needs upper-case letters, or characters a variable name cannot hold,
//!   belongs in the password file. Two variables that lower-case to the same user are an
//!   error, and so is a user that the password file defines too ([`super::Users`]).
//! - A value that starts with `$7$` or `$6$` is a hash in the password file's format
//!   (so a plain password cannot start with those); anything else is the plain password.
//!   An empty value is an error, not a user without a password.
//! - Plain passwords are hashed (PBKDF2, fresh salt) when read and the clear text is not
//!   kept: verification then costs the same for every user, known or not, and compares
//!   hashes in constant time.
//!
//! The configuration loader (`config.rs`) skips these variables: they are not
//! configuration keys.

use std::collections::{BTreeMap, HashMap};

use super::hash::{self, PasswordHash};
use super::password::check_user_name;
use super::{AuthError, STRING_BYTES_MAX};

/// Prefix of the environment variables that define users.
pub const USER_ENV_PREFIX: &str = "CUTIE_USER_";

/// The users defined by `CUTIE_USER_*` variables.
#[derive(Debug, Default)]
pub struct EnvUsers {
    /// User name -> (the variable that defined it, for error messages; its hash).
    users: HashMap<String, (String, PasswordHash)>,
}

impl EnvUsers {
    /// Reads the users from `(name, value)` pairs; names without the prefix are ignored,
    /// so the whole environment can be passed. Errors name the variable, never its value.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, AuthError> {
        // Sorted, so that which of two conflicting variables is named does not depend on
        // the environment's order.
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .filter(|(name, _)| name.starts_with(USER_ENV_PREFIX))
            .collect();
        let mut users: HashMap<String, (String, PasswordHash)> = HashMap::new();
        for (name, value) in vars {
            let error = |reason: String| AuthError::Env {
                name: name.clone(),
                reason,
            };
            let user = name
                .strip_prefix(USER_ENV_PREFIX)
                .unwrap_or_default()
                .to_lowercase();
            check_user_name(&user).map_err(error)?;
            if let Some((other, _)) = users.get(&user) {
                return Err(error(format!(
                    "user '{user}' is already defined by {other}"
                )));
            }
            let hash = parse_value(&value).map_err(error)?;
            users.insert(user, (name, hash));
        }
        Ok(EnvUsers { users })
    }

    /// Reads the users from this process's environment. A `CUTIE_USER_*` variable whose
    /// value is not UTF-8 is an error; variables whose names are not UTF-8 are not ours.
    pub fn from_process_env() -> Result<Self, AuthError> {
        let mut vars = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(USER_ENV_PREFIX) {
                continue;
            }
            let value = value.into_string().map_err(|_| AuthError::Env {
                name: name.to_owned(),
                reason: "value is not UTF-8".to_owned(),
            })?;
            vars.push((name.to_owned(), value));
        }
        Self::from_env(vars)
    }

    /// Whether `password` is `user`'s; one hash verification whether or not the user
    /// exists.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some((_, hash)) => hash.verify(password),
            None => hash::verify_dummy(password),
        }
    }

    /// Whether a variable defines `user`.
    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// How many users the environment defines.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the environment defines no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub(super) fn into_map(self) -> HashMap<String, (String, PasswordHash)> {
        self.users
    }
}

fn parse_value(value: &str) -> Result<PasswordHash, String> {
    if value.starts_with("$7$") || value.starts_with("$6$") {
        return PasswordHash::parse(value).map_err(|e| e.to_string());
    }
    if value.is_empty() {
        return Err("empty password".to_owned());
    }
    if value.len() > STRING_BYTES_MAX {
        return Err(format!("password longer than {STRING_BYTES_MAX} bytes"));
    }
    PasswordHash::new(value.as_bytes()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::auth::hash::SALT_BYTES;

    fn from(pairs: &[(&str, &str)]) -> Result<EnvUsers, AuthError> {
        EnvUsers::from_env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn plain_password_defines_a_lower_cased_user() {
        let users = from(&[("CUTIE_USER_SENSOR", "s3cret"), ("HOME", "/root")]).unwrap();
        assert_eq!(users.len(), 1);
        assert!(users.contains("sensor"));
        assert!(!users.contains("SENSOR"));
        assert!(users.verify("sensor", b"s3cret"));
        assert!(!users.verify("sensor", b"s3cret "));
        assert!(!users.verify("sensor", b""));
        assert!(!users.verify("SENSOR", b"s3cret"));
    }

    #[test]
    fn hash_value_defines_a_user_with_that_hash() {
        let hash = PasswordHash::with_salt(b"hashed", [9; SALT_BYTES], 10);
        let users = from(&[("CUTIE_USER_Admin", &hash.to_string())]).unwrap();
        assert!(users.verify("admin", b"hashed"));
        assert!(!users.verify("admin", hash.to_string().as_bytes()));
    }

    #[test]
    fn unknown_user_is_refused_through_the_dummy_hash() {
        let users = from(&[("CUTIE_USER_A", "pw")]).unwrap();
        assert!(!users.verify("b", b"pw"));
        assert!(!EnvUsers::default().verify("a", b"pw"));
    }

    #[test]
    fn variables_without_the_exact_prefix_define_nobody() {
        let users = from(&[
            ("CUTIE_SHARDS", "4"),
            ("CUTIE_USERS", "x"),
            ("cutie_user_a", "x"),
            ("XCUTIE_USER_A", "x"),
        ])
        .unwrap();
        assert!(users.is_empty());
    }

    #[test]
    fn bad_variables_are_errors_naming_the_variable_not_the_value() {
        let cases: [(&[(&str, &str)], &str); 5] = [
            (
                &[("CUTIE_USER_", "pw")],
                "environment variable CUTIE_USER_: empty user name",
            ),
            (
                &[("CUTIE_USER_A", "")],
                "environment variable CUTIE_USER_A: empty password",
            ),
            (
                &[("CUTIE_USER_A:B", "pw")],
                "environment variable CUTIE_USER_A:B: user name contains ':'",
            ),
            (
                &[("CUTIE_USER_A", "$7$1$bad$bad")],
                "environment variable CUTIE_USER_A: invalid salt (expected base64 of 12 bytes)",
            ),
            (
                &[("CUTIE_USER_ALICE", "one"), ("CUTIE_USER_alice", "two")],
                "environment variable CUTIE_USER_alice: user 'alice' is already defined by \
                 CUTIE_USER_ALICE",
            ),
        ];
        for (pairs, want) in cases {
            assert_eq!(from(pairs).unwrap_err().to_string(), want, "{pairs:?}");
        }
    }
}
