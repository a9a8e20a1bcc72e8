//! Tests of loading, merging and checking the configuration.

// Tests change one field of a default config at a time; that reads best as
// assignments.
#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn dir_with_file(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DEFAULT_CONFIG_FILE), text).unwrap();
    dir
}

fn load_err(cli: &Cli, pairs: &[(&str, &str)], cwd: &Path) -> String {
    load_from(cli, env(pairs), cwd).unwrap_err().to_string()
}

fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("cutie").chain(args.iter().copied())).unwrap()
}

fn empty_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn cli_definition_is_consistent() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}

#[test]
fn cli_parses_every_flag() {
    let parsed = cli(&[
        "--config",
        "x.toml",
        "--listen",
        "127.0.0.1:1884",
        "--shards",
        "3",
        "--data-dir",
        "/var/lib/cutie",
        "--admin",
        "127.0.0.1:9191",
        "--log-level",
        "debug",
        "--no-pin-cores",
        "--print-config",
    ]);
    assert_eq!(
        parsed,
        Cli {
            config: Some(PathBuf::from("x.toml")),
            listen: Some("127.0.0.1:1884".parse::<SocketAddr>().unwrap()),
            shards: Some(3),
            data_dir: Some(PathBuf::from("/var/lib/cutie")),
            admin: Some("127.0.0.1:9191".parse::<SocketAddr>().unwrap()),
            log_level: Some("debug".to_owned()),
            no_pin_cores: true,
            durability: None,
            recover_skip_corrupt: false,
            password_file: None,
            allow_anonymous: None,
            print_config: true,
        }
    );
}

#[test]
fn cli_rejects_a_bad_address() {
    assert!(Cli::try_parse_from(["cutie", "--listen", "nowhere"]).is_err());
}

#[test]
fn persistent_client_expiration_reads_mosquittos_units() {
    let secs = |text: &str| parse_expiration(text).map(|d| d.map(|d| d.as_secs()));
    assert_eq!(secs("off"), Ok(None));
    assert_eq!(secs(""), Ok(None));
    assert_eq!(secs("2h"), Ok(Some(7200)));
    assert_eq!(secs("14d"), Ok(Some(14 * 86_400)));
    assert_eq!(secs("1w"), Ok(Some(604_800)));
    assert_eq!(secs("6m"), Ok(Some(6 * 30 * 86_400)));
    assert_eq!(secs("1y"), Ok(Some(365 * 86_400)));
    assert_eq!(secs("30s"), Ok(Some(30)));
    for bad in ["h", "10", "10x", "0h", "-1d", "99999999999999999999y"] {
        assert!(secs(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn defaults_are_the_documented_values() {
    let config = Config::default();
    assert!((1..=SHARDS_MAX).contains(&config.shards));
    assert!(config.pin_cores);
    assert_eq!(config.data_dir, PathBuf::from("./data"));
    assert_eq!(config.log_level, "info");
    assert_eq!(config.sys_interval_secs, 10);
    assert_eq!(
        config.listener.tcp,
        "0.0.0.0:1883".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        config.admin.listen,
        "127.0.0.1:9090".parse::<SocketAddr>().unwrap()
    );
    assert!(config.admin.enabled);
    assert_eq!(config.limits.max_packet_size, 1_048_576);
    assert_eq!(config.limits.max_connections, 100_000);
    assert_eq!(config.limits.connect_timeout_secs, 10);
    assert_eq!(config.limits.max_inflight, 32);
    assert_eq!(config.limits.max_queued_messages, 1000);
    assert_eq!(config.limits.outbound_buffer_bytes_max, 1_048_576);
    assert_eq!(config.runtime.io_memory_bytes, 512 * 1024);
    assert_eq!(config.runtime.ring_depth, 128);
    assert_eq!(config.runtime.mesh_channel_capacity, 128);
    assert_eq!(config.validate(), Ok(()));
}

#[test]
fn no_file_no_env_no_flags_gives_the_defaults() {
    let dir = empty_dir();
    let config = load_from(&Cli::default(), env(&[("PATH", "/bin")]), dir.path()).unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn file_overrides_defaults() {
    let dir = dir_with_file(
        "shards = 3\npin_cores = false\n[listener]\ntcp = \"127.0.0.1:1999\"\n\
         [limits]\nmax_inflight = 7\n",
    );
    let config = load_from(&Cli::default(), env(&[]), dir.path()).unwrap();
    assert_eq!(config.shards, 3);
    assert!(!config.pin_cores);
    assert_eq!(
        config.listener.tcp,
        "127.0.0.1:1999".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(config.limits.max_inflight, 7);
    // Keys the file does not mention keep their defaults, also inside a table.
    assert_eq!(config.limits.max_queued_messages, 1000);
    assert_eq!(config.admin, AdminConfig::default());
}

#[test]
fn env_overrides_file() {
    let dir = dir_with_file("shards = 3\n[limits]\nmax_inflight = 7\nmax_connections = 9\n");
    let config = load_from(
        &Cli::default(),
        env(&[
            ("CUTIE_SHARDS", "5"),
            ("CUTIE_LIMITS__MAX_INFLIGHT", "11"),
            ("CUTIE_LISTENER__TCP", "127.0.0.1:2883"),
            ("CUTIE_PIN_CORES", "false"),
        ]),
        dir.path(),
    )
    .unwrap();
    assert_eq!(config.shards, 5);
    assert_eq!(config.limits.max_inflight, 11);
    assert_eq!(config.limits.max_connections, 9);
    assert_eq!(
        config.listener.tcp,
        "127.0.0.1:2883".parse::<SocketAddr>().unwrap()
    );
    assert!(!config.pin_cores);
}

#[test]
fn flags_override_env() {
    let dir = dir_with_file("shards = 3\nlog_level = \"warn\"\n");
    let flags = cli(&[
        "--shards",
        "2",
        "--listen",
        "127.0.0.1:3883",
        "--admin",
        "127.0.0.1:9999",
        "--data-dir",
        "/tmp/flag-data",
        "--log-level",
        "debug",
        "--no-pin-cores",
    ]);
    let config = load_from(
        &flags,
        env(&[
            ("CUTIE_SHARDS", "5"),
            ("CUTIE_LISTENER__TCP", "127.0.0.1:2883"),
            ("CUTIE_ADMIN__LISTEN", "127.0.0.1:2884"),
            ("CUTIE_DATA_DIR", "/tmp/env-data"),
            ("CUTIE_LOG_LEVEL", "error"),
            ("CUTIE_PIN_CORES", "true"),
        ]),
        dir.path(),
    )
    .unwrap();
    assert_eq!(config.shards, 2);
    assert_eq!(
        config.listener.tcp,
        "127.0.0.1:3883".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        config.admin.listen,
        "127.0.0.1:9999".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(config.data_dir, PathBuf::from("/tmp/flag-data"));
    assert_eq!(config.log_level, "debug");
    assert!(!config.pin_cores);
}

#[test]
fn env_values_for_string_keys_stay_strings() {
    let dir = empty_dir();
    let config = load_from(
        &Cli::default(),
        env(&[("CUTIE_DATA_DIR", "2024"), ("CUTIE_LOG_LEVEL", " warn ")]),
        dir.path(),
    )
    .unwrap();
    assert_eq!(config.data_dir, PathBuf::from("2024"));
    assert_eq!(config.log_level, "warn");
}

#[test]
fn config_flag_reads_the_named_file_relative_to_the_working_directory() {
    let dir = dir_with_file("shards = 3\n");
    std::fs::write(dir.path().join("other.toml"), "shards = 4\n").unwrap();
    let config = load_from(&cli(&["--config", "other.toml"]), env(&[]), dir.path()).unwrap();
    assert_eq!(config.shards, 4);
}

#[test]
fn config_env_var_names_the_file_and_is_not_a_key() {
    let dir = dir_with_file("shards = 3\n");
    std::fs::write(dir.path().join("env.toml"), "shards = 6\n").unwrap();
    let pairs = [("CUTIE_CONFIG", "env.toml")];
    let config = load_from(&Cli::default(), env(&pairs), dir.path()).unwrap();
    assert_eq!(config.shards, 6);

    std::fs::write(dir.path().join("flag.toml"), "shards = 7\n").unwrap();
    let flags = cli(&["--config", "flag.toml"]);
    let config = load_from(&flags, env(&pairs), dir.path()).unwrap();
    assert_eq!(config.shards, 7, "--config wins over CUTIE_CONFIG");
}

#[test]
fn missing_config_file_is_an_error_naming_the_path() {
    let dir = empty_dir();
    let message = load_err(&cli(&["--config", "nope.toml"]), &[], dir.path());
    assert_eq!(
        message,
        format!(
            "configuration file {} does not exist",
            dir.path().join("nope.toml").display()
        )
    );

    let error = load_from(
        &Cli::default(),
        env(&[("CUTIE_CONFIG", "/no/such.toml")]),
        dir.path(),
    )
    .unwrap_err();
    assert!(
        matches!(&error, ConfigError::FileNotFound { path } if path == Path::new("/no/such.toml")),
        "{error}"
    );
}

#[test]
fn unreadable_config_path_is_an_error_naming_the_path() {
    let dir = empty_dir();
    let path = dir.path().join("a-directory.toml");
    std::fs::create_dir(&path).unwrap();
    let message = load_err(&cli(&["--config", "a-directory.toml"]), &[], dir.path());
    assert!(message.starts_with(&format!(
        "cannot read configuration file {}: ",
        path.display()
    )));
}

#[test]
fn malformed_toml_is_an_error_naming_the_file_and_line() {
    let dir = dir_with_file("shards = 3\n[limits\n");
    let message = load_err(&Cli::default(), &[], dir.path());
    let path = dir.path().join(DEFAULT_CONFIG_FILE);
    assert!(
        message.starts_with(&format!(
            "cannot parse configuration file {}: ",
            path.display()
        )),
        "{message}"
    );
    assert!(message.contains("line 2"), "{message}");
}

#[test]
fn unknown_key_in_file_is_an_error_naming_key_and_file() {
    let dir = dir_with_file("listenr = \"0.0.0.0:1883\"\n");
    let path = dir.path().join(DEFAULT_CONFIG_FILE);
    assert_eq!(
        load_err(&Cli::default(), &[], dir.path()),
        format!("unknown configuration key 'listenr' in {}", path.display())
    );

    let dir = dir_with_file("[limits]\nmax_inflght = 3\n");
    let path = dir.path().join(DEFAULT_CONFIG_FILE);
    assert_eq!(
        load_err(&Cli::default(), &[], dir.path()),
        format!(
            "unknown configuration key 'limits.max_inflght' in {}",
            path.display()
        )
    );
}

#[test]
fn unknown_key_named_like_its_table_keeps_the_full_path() {
    let dir = dir_with_file("[limits]\nlimits = 3\n");
    let message = load_err(&Cli::default(), &[], dir.path());
    assert!(
        message.starts_with("unknown configuration key 'limits.limits' in "),
        "{message}"
    );
}

#[test]
fn unknown_env_variable_is_a_warning_naming_it() {
    let dir = empty_dir();
    let unknown = |pairs: &[(&str, &str)]| {
        let loaded = load_with_warnings(&Cli::default(), env(pairs), dir.path()).unwrap();
        assert_eq!(
            loaded.config,
            Config::default(),
            "{pairs:?} changed nothing"
        );
        loaded.unknown_variables
    };
    // Not a near miss of anything: no suggestion.
    assert_eq!(
        unknown(&[("CUTIE_BIN", "/usr/local/bin/cutie")]),
        vec![UnknownVariable {
            name: "CUTIE_BIN".to_owned(),
            suggestion: None
        }]
    );
    assert_eq!(
        unknown(&[("CUTIE_BIN", "x")])[0].to_string(),
        "ignoring environment variable CUTIE_BIN: not a configuration key"
    );
    // Near misses: a transposition, a missing letter, a missing level separator.
    for (typo, meant) in [
        ("CUTIE_LIMITS__MAX_INFLIHGT", "CUTIE_LIMITS__MAX_INFLIGHT"),
        ("CUTIE_LIMITS__MAX_INFLGHT", "CUTIE_LIMITS__MAX_INFLIGHT"),
        ("CUTIE_SHARD", "CUTIE_SHARDS"),
        ("CUTIE_LISTENER_TCP", "CUTIE_LISTENER__TCP"),
        (
            "CUTIE_ADMIN__CONNECTION_MAX",
            "CUTIE_ADMIN__CONNECTIONS_MAX",
        ),
        ("CUTIE_TLS__CERT_FLE", "CUTIE_TLS__CERT_FILE"),
    ] {
        let found = unknown(&[(typo, "5")]);
        assert_eq!(found.len(), 1, "{typo}");
        assert_eq!(found[0].suggestion.as_deref(), Some(meant), "{typo}");
    }
    assert_eq!(
        unknown(&[("CUTIE_LIMITS__MAX_INFLIHGT", "5")])[0].to_string(),
        "ignoring environment variable CUTIE_LIMITS__MAX_INFLIHGT: not a configuration \
         key (did you mean CUTIE_LIMITS__MAX_INFLIGHT?)"
    );
    // Known variables beside the unknown ones still apply.
    let loaded = load_with_warnings(
        &Cli::default(),
        env(&[("CUTIE_SHARDS", "3"), ("CUTIE_BIN", "x")]),
        dir.path(),
    )
    .unwrap();
    assert_eq!(loaded.config.shards, 3);
    assert_eq!(loaded.unknown_variables.len(), 1);
}

#[test]
fn known_env_variables_give_no_warning() {
    let dir = empty_dir();
    let pairs = [
        ("CUTIE_SHARDS", "2"),
        ("CUTIE_LIMITS__MAX_INFLIGHT", "5"),
        ("CUTIE_TLS__CERT_FILE", "/etc/cutie/cert.pem"),
        ("CUTIE_AUTH__ALLOW_ANONYMOUS", "false"),
        ("CUTIE_USER_ALICE", "secret"),
        ("CUTIE_CONFIG", "cutie.toml"),
        ("CUTIE_SERVICE_HOST", "10.0.0.1"),
    ];
    let loaded = load_with_warnings(&Cli::default(), env(&pairs), dir.path());
    // The named file does not exist: only that is an error.
    assert!(matches!(loaded, Err(ConfigError::FileNotFound { .. })));
    let loaded = load_with_warnings(&Cli::default(), env(&pairs[..5]), dir.path()).unwrap();
    assert_eq!(loaded.unknown_variables, vec![]);
}

#[test]
fn a_bad_value_for_a_known_env_variable_is_still_an_error() {
    let dir = empty_dir();
    assert!(
        load_err(&Cli::default(), &[("CUTIE_SHARDS", "many")], dir.path())
            .starts_with("invalid value for 'shards'")
    );
}

#[test]
fn variables_without_the_prefix_are_ignored() {
    let dir = empty_dir();
    let pairs = [
        ("CUTIESHARDS", "x"),
        ("HOME", "/root"),
        ("cutie_shards", "x"),
    ];
    let config = load_from(&Cli::default(), env(&pairs), dir.path()).unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn kubernetes_service_link_variables_are_not_configuration_keys() {
    for name in [
        "CUTIE_SERVICE_HOST",
        "CUTIE_SERVICE_PORT",
        "CUTIE_SERVICE_PORT_MQTT",
        "CUTIE_PORT",
        "CUTIE_PORT_1883_TCP",
        "CUTIE_PORT_1883_TCP_ADDR",
    ] {
        assert!(
            is_kubernetes_service_link(name.strip_prefix("CUTIE_").unwrap_or(name)),
            "{name}"
        );
    }
    for name in [
        "CUTIE_SHARDS",
        "CUTIE_PORTS",
        "CUTIE_PORT_X",
        "CUTIE_SERVICE",
    ] {
        assert!(
            !is_kubernetes_service_link(name.strip_prefix("CUTIE_").unwrap_or(name)),
            "{name}"
        );
    }
}

#[test]
fn user_variables_are_not_configuration_keys() {
    let dir = empty_dir();
    let pairs = [("CUTIE_USER_ALICE", "secret"), ("CUTIE_USER_", "x")];
    let config = load_from(&Cli::default(), env(&pairs), dir.path()).unwrap();
    assert_eq!(config, Config::default());
    // A near miss is an unknown variable, not a user.
    let loaded =
        load_with_warnings(&Cli::default(), env(&[("CUTIE_USERS", "x")]), dir.path()).unwrap();
    assert_eq!(loaded.config, Config::default());
    assert_eq!(loaded.unknown_variables[0].name, "CUTIE_USERS");
}

#[test]
fn bad_value_type_in_file_is_an_error_naming_the_key() {
    let dir = dir_with_file("shards = \"many\"\n");
    let message = load_err(&Cli::default(), &[], dir.path());
    let path = dir.path().join(DEFAULT_CONFIG_FILE);
    assert!(
        message.starts_with(&format!(
            "invalid value for 'shards' (from {}): ",
            path.display()
        )),
        "{message}"
    );
    assert!(message.contains("many"), "{message}");

    let dir = dir_with_file("[limits]\nmax_inflight = 70000\n");
    let message = load_err(&Cli::default(), &[], dir.path());
    assert!(
        message.starts_with("invalid value for 'limits.max_inflight'"),
        "{message}"
    );
}

#[test]
fn bad_value_in_env_is_an_error_naming_the_variable() {
    let dir = empty_dir();
    let message = load_err(
        &Cli::default(),
        &[("CUTIE_LISTENER__TCP", "nowhere")],
        dir.path(),
    );
    assert!(
        message.starts_with(
            "invalid value for 'listener.tcp' (from environment variable CUTIE_LISTENER__TCP): "
        ),
        "{message}"
    );
    let message = load_err(&Cli::default(), &[("CUTIE_SHARDS", "many")], dir.path());
    assert!(
        message.starts_with("invalid value for 'shards' (from environment variable CUTIE_SHARDS)"),
        "{message}"
    );
}

#[test]
fn range_violations_name_the_key_and_where_the_value_came_from() {
    let dir = dir_with_file("[limits]\nmax_inflight = 0\n");
    let path = dir.path().join(DEFAULT_CONFIG_FILE);
    assert_eq!(
        load_err(&Cli::default(), &[], dir.path()),
        format!(
            "invalid value for 'limits.max_inflight' (from {}): must be between 1 and 65535, got 0",
            path.display()
        )
    );

    let dir = empty_dir();
    assert_eq!(
        load_err(&cli(&["--shards", "0"]), &[], dir.path()),
        "invalid value for 'shards' (from command-line flag --shards): \
         must be between 1 and 256, got 0"
    );
    assert_eq!(
        load_err(
            &Cli::default(),
            &[("CUTIE_RUNTIME__RING_DEPTH", "100")],
            dir.path()
        ),
        "invalid value for 'runtime.ring_depth' (from environment variable \
         CUTIE_RUNTIME__RING_DEPTH): must be a power of two, got 100"
    );
}

#[test]
fn every_range_is_checked() {
    type Breaker = fn(&mut Config);
    let cases: Vec<(&str, Breaker)> = vec![
        ("shards", |c| c.shards = SHARDS_MAX + 1),
        ("log_level", |c| c.log_level = "info,[".to_owned()),
        ("sys_interval_secs", |c| c.sys_interval_secs = 86_401),
        ("log_queue_lines", |c| c.log_queue_lines = 0),
        ("data_dir", |c| c.data_dir = PathBuf::new()),
        ("limits.max_packet_size", |c| c.limits.max_packet_size = 63),
        ("limits.max_packet_size", |c| {
            c.limits.max_packet_size = PACKET_SIZE_MAX + 1
        }),
        ("limits.max_connections", |c| c.limits.max_connections = 0),
        ("limits.connect_timeout_secs", |c| {
            c.limits.connect_timeout_secs = 0
        }),
        ("limits.max_inflight", |c| c.limits.max_inflight = 0),
        ("limits.max_queued_messages", |c| {
            c.limits.max_queued_messages = 0
        }),
        ("limits.outbound_buffer_bytes_max", |c| {
            c.limits.outbound_buffer_bytes_max = 0
        }),
        ("limits.persistent_client_expiration", |c| {
            c.limits.persistent_client_expiration = "3 weeks".to_owned()
        }),
        ("limits.persistent_client_expiration", |c| {
            c.limits.persistent_client_expiration = "0d".to_owned()
        }),
        ("runtime.io_memory_bytes", |c| {
            c.runtime.io_memory_bytes = 64 * 1024 - 1
        }),
        ("runtime.ring_depth", |c| c.runtime.ring_depth = 4),
        ("runtime.ring_depth", |c| c.runtime.ring_depth = 8192),
        ("runtime.mesh_channel_capacity", |c| {
            c.runtime.mesh_channel_capacity = 0
        }),
        ("admin.connections_max", |c| c.admin.connections_max = 0),
        ("admin.connections_per_address_max", |c| {
            c.admin.connections_per_address_max = 0
        }),
        ("admin.connections_per_address_max", |c| {
            c.admin.connections_per_address_max = c.admin.connections_max + 1
        }),
        ("admin.header_read_timeout_secs", |c| {
            c.admin.header_read_timeout_secs = 0
        }),
        ("admin.connection_timeout_secs", |c| {
            c.admin.connection_timeout_secs = c.admin.header_read_timeout_secs - 1
        }),
    ];
    for (key, break_it) in cases {
        let mut config = Config::default();
        break_it(&mut config);
        let violation = config.validate().unwrap_err();
        assert_eq!(violation.key, key, "{violation:?}");
    }

    let mut edges = Config::default();
    edges.shards = 1;
    edges.limits.max_packet_size = PACKET_SIZE_MAX;
    edges.limits.max_inflight = u16::MAX;
    edges.runtime.ring_depth = 8;
    edges.runtime.io_memory_bytes = 64 * 1024;
    edges.admin.connections_max = 1;
    edges.admin.connections_per_address_max = 1;
    edges.admin.connection_timeout_secs = edges.admin.header_read_timeout_secs;
    assert_eq!(edges.validate(), Ok(()));
}

#[test]
fn admin_may_not_share_the_mqtt_port() {
    let dir = empty_dir();
    let message = load_err(&cli(&["--admin", "127.0.0.1:1883"]), &[], dir.path());
    assert!(
        message.starts_with("invalid value for 'admin.listen' (from command-line flag --admin)"),
        "{message}"
    );

    let mut config = Config::default();
    config.admin.listen = "127.0.0.1:1883".parse::<SocketAddr>().unwrap();
    config.admin.enabled = false;
    assert_eq!(
        config.validate(),
        Ok(()),
        "a disabled admin endpoint binds nothing"
    );
}

#[test]
fn printed_config_loads_back_to_the_same_config() {
    let mut config = Config::default();
    config.shards = 3;
    config.pin_cores = false;
    config.data_dir = PathBuf::from("/var/lib/cutie");
    config.log_level = "warn,cutie_shard=debug".to_owned();
    config.listener.tcp = "[::1]:1884".parse::<SocketAddr>().unwrap();
    config.admin.enabled = false;
    config.limits.max_inflight = 65535;
    config.limits.connect_timeout_secs = 30;
    config.runtime.ring_depth = 1024;

    for config in [Config::default(), config] {
        let text = config.to_toml();
        let dir = dir_with_file(&text);
        let loaded = load_from(&Cli::default(), env(&[]), dir.path()).unwrap();
        assert_eq!(loaded, config, "printed:\n{text}");
    }
}

#[test]
fn printed_config_uses_tables_for_sections() {
    let text = Config::default().to_toml();
    for table in ["[listener]", "[admin]", "[limits]", "[runtime]"] {
        assert!(text.contains(table), "{text}");
    }
}

#[test]
fn tls_listener_is_off_by_default() {
    let config = Config::default();
    assert_eq!(config.listener.tls, None);
    assert_eq!(config.tls, TlsConfig::default());
    let text = config.to_toml();
    assert!(!text.contains("tls = "), "{text}");
    assert!(text.contains("[tls]"), "{text}");
}

#[test]
fn tls_keys_load_from_file_and_environment() {
    let dir = dir_with_file(
        "[listener]\ntls = \"127.0.0.1:8883\"\n\
         [tls]\ncert_file = \"/etc/cutie/cert.pem\"\nkey_file = \"/etc/cutie/key.pem\"\n",
    );
    let config = load_from(&Cli::default(), env(&[]), dir.path()).unwrap();
    assert_eq!(
        config.listener.tls,
        Some("127.0.0.1:8883".parse::<SocketAddr>().unwrap())
    );
    assert_eq!(
        config.tls.cert_file.as_deref(),
        Some(Path::new("/etc/cutie/cert.pem"))
    );
    assert!(!config.tls.use_identity_as_username);

    let config = load_from(
        &Cli::default(),
        env(&[
            ("CUTIE_LISTENER__TLS", "0.0.0.0:8884"),
            ("CUTIE_TLS__CERT_FILE", "c.pem"),
            ("CUTIE_TLS__KEY_FILE", "k.pem"),
            ("CUTIE_TLS__CLIENT_CA_FILE", "ca.pem"),
            ("CUTIE_TLS__USE_IDENTITY_AS_USERNAME", "true"),
        ]),
        dir.path(),
    )
    .unwrap();
    assert_eq!(
        config.listener.tls,
        Some("0.0.0.0:8884".parse::<SocketAddr>().unwrap())
    );
    assert_eq!(
        config.tls.client_ca_file.as_deref(),
        Some(Path::new("ca.pem"))
    );
    assert!(config.tls.use_identity_as_username);
}

#[test]
fn tls_listener_needs_its_files_and_a_port_of_its_own() {
    let dir = empty_dir();
    assert_eq!(
        load_err(
            &Cli::default(),
            &[("CUTIE_LISTENER__TLS", "0.0.0.0:8883")],
            dir.path()
        ),
        "invalid value for 'listener.tls' (from environment variable CUTIE_LISTENER__TLS): \
         a TLS listener needs tls.cert_file and tls.key_file"
    );
    let files = [
        ("CUTIE_TLS__CERT_FILE", "c.pem"),
        ("CUTIE_TLS__KEY_FILE", "k.pem"),
    ];
    let message = load_err(
        &Cli::default(),
        &[
            files[0],
            files[1],
            ("CUTIE_LISTENER__TLS", "127.0.0.1:1883"),
        ],
        dir.path(),
    );
    assert!(
        message.starts_with("invalid value for 'listener.tls'")
            && message.ends_with("127.0.0.1:1883 collides with listener.tcp 0.0.0.0:1883"),
        "{message}"
    );
    let message = load_err(
        &cli(&["--admin", "127.0.0.1:8883"]),
        &[files[0], files[1], ("CUTIE_LISTENER__TLS", "0.0.0.0:8883")],
        dir.path(),
    );
    assert!(
        message.starts_with("invalid value for 'admin.listen' (from command-line flag --admin)"),
        "{message}"
    );
    let message = load_err(
        &Cli::default(),
        &[("CUTIE_TLS__USE_IDENTITY_AS_USERNAME", "true")],
        dir.path(),
    );
    assert!(
        message.starts_with(
            "invalid value for 'tls.use_identity_as_username' (from environment variable \
             CUTIE_TLS__USE_IDENTITY_AS_USERNAME): needs tls.client_ca_file"
        ),
        "{message}"
    );
    // Port 0 (tests) collides with nothing.
    let mut config = Config::default();
    config.listener.tcp = "127.0.0.1:0".parse::<SocketAddr>().unwrap();
    config.listener.tls = Some("127.0.0.1:0".parse::<SocketAddr>().unwrap());
    config.tls.cert_file = Some(PathBuf::from("c.pem"));
    config.tls.key_file = Some(PathBuf::from("k.pem"));
    assert_eq!(config.validate(), Ok(()));
}

#[test]
fn printed_config_with_tls_loads_back_to_the_same_config() {
    let mut config = Config::default();
    config.listener.tls = Some("[::]:8883".parse::<SocketAddr>().unwrap());
    config.tls = TlsConfig {
        cert_file: Some(PathBuf::from("/etc/cutie/tls/chain.pem")),
        key_file: Some(PathBuf::from("/etc/cutie/tls/key.pem")),
        client_ca_file: Some(PathBuf::from("/etc/cutie/tls/clients.pem")),
        use_identity_as_username: true,
    };
    let text = config.to_toml();
    let dir = dir_with_file(&text);
    let loaded = load_from(&Cli::default(), env(&[]), dir.path()).unwrap();
    assert_eq!(loaded, config, "printed:\n{text}");
}
