//! The broker's configuration: one [`Config`] merged from four layers.
//!
//! Precedence, lowest first:
//!
//! 1. built-in defaults ([`Config::default`]): `cutie` with no file runs a working
//!    broker on `0.0.0.0:1883` with data under `./data`;
//! 2. a TOML file: `--config PATH`, else the path in `CUTIE_CONFIG`, else
//!    `./cutie.toml` if it exists, else none. A file that was asked for by name
//!    must exist;
//! 3. environment variables `CUTIE_<KEY>`, with `__` between nesting levels:
//!    `CUTIE_SHARDS=8`, `CUTIE_LISTENER__TCP=0.0.0.0:1883`,
//!    `CUTIE_LIMITS__MAX_INFLIGHT=64`. Only upper-case `CUTIE_` names are read.
//!    `CUTIE_CONFIG` names the file and is not a key, nor is `CUTIE_USER_<NAME>`,
//!    which defines a user (`crate::auth::env`);
//! 4. command-line flags ([`Cli`]).
//!
//! The file is strict: a key that [`Config`] does not have is an error that names
//! it and the file. A `CUTIE_*` variable that names no key is not: the environment
//! is shared with whatever else runs (`CUTIE_BIN` in a user's script), so it is
//! ignored with a warning ([`UnknownVariable`]) that names it and, for a near miss,
//! the key it probably meant. A value of the wrong type or out of range is an error
//! in every layer. Ranges are checked once, on the merged result, and the error
//! names the layer that supplied the value.
//!
//! Loading is done once at start-up, off the shard threads; it reads at most one
//! small file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use figment::error::Kind;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::auth::env::USER_ENV_PREFIX;

mod cli;
mod load;
mod model;
#[cfg(test)]
mod tests;
mod validate;

pub use cli::*;
pub use load::*;
pub use model::*;
