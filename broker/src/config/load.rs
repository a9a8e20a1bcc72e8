//! Loading: the file, the environment and the flags merged with figment, errors that
//! name their layer, and warnings for `CUTIE_*` variables that name no key.

use super::*;

/// Which layer supplied a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSource {
    /// [`Config::default`].
    Default,
    /// The configuration file at this path.
    File(PathBuf),
    /// This environment variable.
    Env(String),
    /// This command-line flag.
    Flag(&'static str),
    /// Not known (should not happen; kept so errors never lose their message).
    Unknown,
}

impl fmt::Display for ValueSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueSource::Default => f.write_str("the built-in default"),
            ValueSource::File(path) => write!(f, "{}", path.display()),
            ValueSource::Env(name) => write!(f, "environment variable {name}"),
            ValueSource::Flag(flag) => write!(f, "command-line flag {flag}"),
            ValueSource::Unknown => f.write_str("an unknown source"),
        }
    }
}

/// Why the configuration could not be loaded. Every variant names the file,
/// key or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file named by `--config` or `CUTIE_CONFIG` is not there.
    #[error("configuration file {} does not exist", path.display())]
    FileNotFound {
        /// The path as resolved against the working directory.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("cannot parse configuration file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// A key that [`Config`] does not have.
    #[error("unknown configuration key '{key}' in {origin}")]
    UnknownKey {
        /// Dotted key path as written (lower-cased for environment variables).
        key: String,
        /// Where it was written.
        origin: ValueSource,
    },
    /// A value of the wrong type, or out of range.
    #[error("invalid value for '{key}' (from {origin}): {reason}")]
    InvalidValue {
        /// Dotted key path.
        key: String,
        /// The layer that supplied the value.
        origin: ValueSource,
        /// What is wrong with it.
        reason: String,
    },
}

/// A `CUTIE_*` environment variable that names no configuration key: ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVariable {
    /// The variable.
    pub name: String,
    /// The variable of the nearest key, if it is near enough to be a typo.
    pub suggestion: Option<String>,
}

impl fmt::Display for UnknownVariable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ignoring environment variable {}: not a configuration key",
            self.name
        )?;
        match &self.suggestion {
            Some(suggestion) => write!(f, " (did you mean {suggestion}?)"),
            None => Ok(()),
        }
    }
}

/// A loaded configuration, and what was ignored on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The merged, validated configuration.
    pub config: Config,
    /// `CUTIE_*` variables that name no key, to warn about.
    pub unknown_variables: Vec<UnknownVariable>,
}

/// Loads the configuration from the process environment and working directory.
pub fn load(cli: &Cli) -> Result<Loaded, ConfigError> {
    let env = std::env::vars_os().filter_map(|(name, value)| {
        let name = name.into_string().ok()?;
        name.starts_with(ENV_PREFIX)
            .then(|| (name, value.to_string_lossy().into_owned()))
    });
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    load_with_warnings(cli, env, &cwd)
}

/// [`load_with_warnings`] without the warnings.
#[cfg(test)]
pub fn load_from(
    cli: &Cli,
    env: impl IntoIterator<Item = (String, String)>,
    cwd: &Path,
) -> Result<Config, ConfigError> {
    load_with_warnings(cli, env, cwd).map(|loaded| loaded.config)
}

/// Loads the configuration from the given flags, environment variables and
/// working directory, touching no process-wide state (tests run in parallel).
pub fn load_with_warnings(
    cli: &Cli,
    env: impl IntoIterator<Item = (String, String)>,
    cwd: &Path,
) -> Result<Loaded, ConfigError> {
    let env: BTreeMap<String, String> = env.into_iter().collect();
    let defaults = Config::default();

    let mut figment = Figment::new().merge(Serialized::defaults(&defaults));
    if let Some(file) = config_file(cli, &env, cwd)? {
        figment = figment.merge(file);
    }
    let env_vars = EnvVars::new(&env, &defaults)?;
    let unknown_variables = env_vars.unknown.clone();
    figment = figment.merge(env_vars);

    let mut config: Config = figment.extract().map_err(from_figment)?;
    cli.apply(&mut config);
    config.validate().map_err(|violation| {
        let origin = match cli.flag_for(violation.key) {
            Some(flag) => ValueSource::Flag(flag),
            None => figment
                .find_metadata(violation.key)
                .map(|md| value_source(md, &Profile::Default, &split_key(violation.key)))
                .unwrap_or(ValueSource::Unknown),
        };
        ConfigError::InvalidValue {
            key: violation.key.to_owned(),
            origin,
            reason: violation.reason,
        }
    })?;
    Ok(Loaded {
        config,
        unknown_variables,
    })
}

/// Finds and reads the configuration file, if there is one.
pub(super) fn config_file(
    cli: &Cli,
    env: &BTreeMap<String, String>,
    cwd: &Path,
) -> Result<Option<TomlFile>, ConfigError> {
    let named = cli
        .config
        .clone()
        .or_else(|| env.get(CONFIG_PATH_ENV).map(PathBuf::from));
    let (path, required) = match named {
        Some(path) => (cwd.join(path), true),
        None => (cwd.join(DEFAULT_CONFIG_FILE), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            if let Err(e) = toml::from_str::<toml::Table>(&text) {
                return Err(ConfigError::Parse {
                    path,
                    message: e.to_string().trim_end().to_owned(),
                });
            }
            Ok(Some(TomlFile { path, text }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if required {
                Err(ConfigError::FileNotFound { path })
            } else {
                Ok(None)
            }
        }
        Err(source) => Err(ConfigError::ReadFile { path, source }),
    }
}

/// Turns a figment error into one that names the key and its source.
pub(super) fn from_figment(error: figment::Error) -> ConfigError {
    let profile = error.profile.clone().unwrap_or_default();
    let origin = error
        .metadata
        .as_ref()
        .map(|md| value_source(md, &profile, &error.path))
        .unwrap_or(ValueSource::Unknown);
    match &error.kind {
        Kind::UnknownField(field, _) => {
            let mut path = error.path.clone();
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            let origin = match origin {
                ValueSource::Env(_) => ValueSource::Env(env_var_name(&path)),
                other => other,
            };
            ConfigError::UnknownKey {
                key: path.join("."),
                origin,
            }
        }
        kind => ConfigError::InvalidValue {
            key: error.path.join("."),
            origin,
            reason: kind.to_string(),
        },
    }
}

/// Which layer a figment metadata stands for.
pub(super) fn value_source<K: AsRef<str>>(
    md: &Metadata,
    profile: &Profile,
    path: &[K],
) -> ValueSource {
    match &md.source {
        Some(figment::Source::File(file)) => ValueSource::File(file.clone()),
        Some(figment::Source::Code(_)) => ValueSource::Default,
        _ if md.name == ENV_METADATA_NAME => ValueSource::Env(md.interpolate(profile, path)),
        _ => ValueSource::Unknown,
    }
}

pub(super) fn split_key(key: &str) -> Vec<&str> {
    key.split('.').collect()
}

/// The canonical variable for a key path: `limits.max_inflight` ->
/// `CUTIE_LIMITS__MAX_INFLIGHT`.
pub(super) fn env_var_name<K: AsRef<str>>(path: &[K]) -> String {
    let keys: Vec<String> = path
        .iter()
        .map(|k| k.as_ref().to_ascii_uppercase())
        .collect();
    format!("{ENV_PREFIX}{}", keys.join(ENV_NESTING_SEPARATOR))
}

/// The configuration file as a figment layer; its metadata carries the path so
/// errors can name it.
pub(super) struct TomlFile {
    path: PathBuf,
    text: String,
}

impl Provider for TomlFile {
    fn metadata(&self) -> Metadata {
        Metadata::from("configuration file", self.path.as_path())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Toml::string(&self.text).data()
    }
}

/// The `CUTIE_*` environment variables as a figment layer, built from given
/// pairs rather than the process environment.
pub(super) struct EnvVars {
    dict: Dict,
    /// Key path -> the variable that set it, for error messages.
    names: Arc<BTreeMap<String, String>>,
    /// The variables left out because they name no key.
    unknown: Vec<UnknownVariable>,
}

impl EnvVars {
    /// Values are parsed like figment's `Env` (numbers, booleans, arrays),
    /// except for keys whose default is a string: `CUTIE_DATA_DIR=2024` is the
    /// directory "2024", not a number. A variable that names no key is left out and
    /// reported in `unknown`.
    fn new(env: &BTreeMap<String, String>, defaults: &Config) -> Result<Self, ConfigError> {
        let defaults_value = Value::serialize(defaults).map_err(from_figment)?;
        let mut dict = Dict::new();
        let mut names = BTreeMap::new();
        let mut unknown = Vec::new();
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // `CUTIE_USER_<NAME>` defines a user (crate::auth::env), not a key.
            if name == CONFIG_PATH_ENV || rest.is_empty() || name.starts_with(USER_ENV_PREFIX) {
                continue;
            }
            // Kubernetes injects `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT_1883_TCP`, ...
            // for every Service: with a Service named `cutie` these are not keys either.
            if is_kubernetes_service_link(rest) {
                continue;
            }
            let key = rest
                .to_ascii_lowercase()
                .split(ENV_NESTING_SEPARATOR)
                .collect::<Vec<_>>()
                .join(".");
            let raw = raw.trim();
            let value = match defaults_value.find_ref(&key) {
                Some(Value::String(..)) => Value::from(raw.to_owned()),
                _ => raw.parse().unwrap_or_else(|never| match never {}),
            };
            if !names_a_key(defaults, &key, &value) {
                unknown.push(UnknownVariable {
                    name: name.clone(),
                    suggestion: nearest_variable(rest, &defaults_value),
                });
                continue;
            }
            insert_nested(&mut dict, &key, value);
            names.insert(key, name.clone());
        }
        Ok(EnvVars {
            dict,
            names: Arc::new(names),
            unknown,
        })
    }
}

/// Whether `key` = `value` alone on top of `defaults` is a key [`Config`] has: the
/// deserializer, which refuses unknown fields, decides (a value of the wrong type is
/// still a key, and an error later).
pub(super) fn names_a_key(defaults: &Config, key: &str, value: &Value) -> bool {
    let mut dict = Dict::new();
    insert_nested(&mut dict, key, value.clone());
    match Figment::from(Serialized::defaults(defaults))
        .merge(Serialized::defaults(dict))
        .extract::<Config>()
    {
        Ok(_) => true,
        Err(errors) => !errors
            .into_iter()
            .any(|error| matches!(error.kind, Kind::UnknownField(..))),
    }
}

/// The `CUTIE_*` variable of the key nearest to `rest` (a variable's name after
/// `CUTIE_`), if it is within a typo or two: Damerau-Levenshtein distance at most a
/// quarter of the name's length, between 1 and 3.
pub(super) fn nearest_variable(rest: &str, defaults: &Value) -> Option<String> {
    let mut keys = Vec::new();
    leaf_keys(defaults, &mut Vec::new(), &mut keys);
    let rest = rest.to_ascii_uppercase();
    let distance_max = (rest.len() / 4).clamp(1, 3);
    keys.iter()
        .map(|path| env_var_name(path))
        .map(|name| {
            let distance = strsim::damerau_levenshtein(&rest, &name[ENV_PREFIX.len()..]);
            (distance, name)
        })
        .filter(|(distance, _)| *distance <= distance_max)
        .min()
        .map(|(_, name)| name)
}

/// Every key path of `value` that holds something other than a table.
pub(super) fn leaf_keys(value: &Value, path: &mut Vec<String>, keys: &mut Vec<Vec<String>>) {
    match value {
        Value::Dict(_, dict) => {
            for (key, inner) in dict {
                path.push(key.clone());
                leaf_keys(inner, path, keys);
                path.pop();
            }
        }
        _ if !path.is_empty() => keys.push(path.clone()),
        _ => {}
    }
}

/// Inserts `value` at the dotted `key`, creating tables on the way; a later
/// scalar on the way is replaced by a table.
pub(super) fn insert_nested(dict: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_owned(), value);
        }
        Some((head, tail)) => {
            let entry = dict
                .entry(head.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_nested(inner, tail, value);
            }
        }
    }
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        let names = Arc::clone(&self.names);
        Metadata::named(ENV_METADATA_NAME).interpolater(move |_: &Profile, path: &[&str]| {
            names
                .get(&path.join("."))
                .cloned()
                .unwrap_or_else(|| env_var_name(path))
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}
