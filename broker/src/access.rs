//! The built-in authentication and authorization, plugged into the shards' interface
//! ([`cutie_shard::access`]): the password file and `CUTIE_USER_*` users check CONNECT
//! credentials, the ACL file decides what each client may publish and subscribe to.
//! [`load`] reads the configuration's sources and installs them; [`reload`] does it again
//! on SIGHUP, keeping what is in force when a file is bad.

use crate::auth::acl::{Acl, ClientAcl};
use crate::auth::{AuthError, EnvUsers, PasswordFile, Users};
use crate::config::AuthConfig;
use cutie_shard::access::{
    AccessControl, AuthOutcome, Authenticator, Authorizer, ClientPolicy, Identity,
};
use std::sync::Arc;

/// Credentials from the password file and the environment, and whether clients without
/// a user name are let in.
#[derive(Debug)]
struct Credentials {
    users: Users,
    allow_anonymous: bool,
}

impl Authenticator for Credentials {
    fn authenticate(&self, client: &Identity<'_>, password: Option<&[u8]>) -> AuthOutcome {
        match client.username {
            None if self.allow_anonymous => AuthOutcome::Accept,
            // Mosquitto answers an anonymous client it does not allow with "not authorised".
            None => AuthOutcome::NotAuthorized,
            // One hash verification whether or not the user exists: the answer's timing
            // does not tell which user names are valid.
            Some(user) => {
                if self.users.verify(user, password.unwrap_or_default()) {
                    AuthOutcome::Accept
                } else {
                    AuthOutcome::BadCredentials
                }
            }
        }
    }
}

/// The ACL file, as the shards' authorizer.
#[derive(Debug)]
struct AclAuthorizer(Acl);

#[derive(Debug)]
struct AclPolicy(ClientAcl);

impl Authorizer for AclAuthorizer {
    fn policy(&self, client: &Identity<'_>) -> Box<dyn ClientPolicy> {
        Box::new(AclPolicy(
            self.0.for_client(client.username, client.client_id),
        ))
    }
}

impl ClientPolicy for AclPolicy {
    fn may_publish(&self, topic: &str) -> bool {
        self.0.check_publish(topic)
    }

    fn may_subscribe(&self, filter: &str) -> bool {
        self.0.check_subscribe(filter)
    }

    fn may_read(&self, topic: &str) -> bool {
        self.0.check_receive(topic)
    }
}

/// What [`load`] installed, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// Users with a password (file and environment).
    pub users: usize,
    /// Whether clients without a user name are accepted.
    pub allow_anonymous: bool,
    /// Whether an ACL is in force.
    pub acl: bool,
}

/// Reads the password file, the `CUTIE_USER_*` variables and the ACL file named by
/// `config` and installs them in `access`. Nothing is installed if any source is bad.
pub fn load(config: &AuthConfig, access: &AccessControl) -> Result<Loaded, AuthError> {
    let file = config
        .password_file
        .as_deref()
        .map(PasswordFile::load)
        .transpose()?;
    let env = EnvUsers::from_process_env()?;
    let has_sources = file.is_some() || !env.is_empty();
    let users = Users::new(file, env)?;
    let acl = config.acl_file.as_deref().map(Acl::load).transpose()?;
    let allow_anonymous = config.allow_anonymous.unwrap_or(!has_sources);
    let loaded = Loaded {
        users: users.len(),
        allow_anonymous,
        acl: acl.is_some(),
    };
    // With nobody to check and anonymous clients welcome, checking costs a blocking-thread
    // round trip per CONNECT and decides nothing: install no authenticator.
    let authenticator: Option<Arc<dyn Authenticator>> = if has_sources || !allow_anonymous {
        Some(Arc::new(Credentials {
            users,
            allow_anonymous,
        }))
    } else {
        None
    };
    access.set_authenticator(authenticator);
    access.set_authorizer(acl.map(|acl| Arc::new(AclAuthorizer(acl)) as Arc<dyn Authorizer>));
    Ok(loaded)
}

/// Logs what is in force, loudly when anyone may connect.
pub fn log_loaded(loaded: &Loaded, config: &AuthConfig) {
    if loaded.allow_anonymous && config.allow_anonymous.is_none() && loaded.users == 0 {
        tracing::warn!(
            "no password file and no CUTIE_USER_* users: ANY client may connect without a \
             user name (set auth.allow_anonymous = false, or add users with `cutie passwd`)"
        );
    }
    tracing::info!(
        users = loaded.users,
        allow_anonymous = loaded.allow_anonymous,
        acl = loaded.acl,
        "access control"
    );
}

/// SIGHUP: loads the sources again; on error keeps what is in force and says why.
pub fn reload(config: &AuthConfig, access: &AccessControl) {
    match load(config, access) {
        Ok(loaded) => {
            tracing::info!(
                users = loaded.users,
                allow_anonymous = loaded.allow_anonymous,
                acl = loaded.acl,
                "access control reloaded"
            );
        }
        Err(error) => {
            tracing::error!(%error, "access control NOT reloaded: keeping the previous users and ACL");
        }
    }
}
