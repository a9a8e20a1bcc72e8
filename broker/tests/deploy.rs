//! The deploy files (`deploy/`) stay in step with the binary's configuration.
//!
//! - `deploy/cutie.toml` documents every key `cutie --print-config` prints, and loads;
//! - the Kubernetes `cutie.toml` loads;
//! - every `CUTIE_*` variable the Dockerfile, the systemd unit and the StatefulSet set
//!   names a real key, and the broker accepts their values together with the
//!   configuration file each of them uses.
//!
//! Only `--print-config` runs: nothing binds a socket, so the tests are fast.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BINARY: &str = env!("CARGO_BIN_EXE_cutie");

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs `cutie ARGS --print-config` with no `CUTIE_*` variable but `env`, in an empty
/// directory (so no `./cutie.toml` is picked up).
fn print_config(args: &[&str], env: &[(String, String)]) -> Output {
    let cwd = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .arg("--print-config")
        .current_dir(cwd.path());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CUTIE_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().map(|(name, value)| (name, value)));
    command.output().expect("the cutie binary runs")
}

fn assert_success(output: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what}: cutie --print-config exited with {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Dotted paths of every leaf key of a TOML document (`shards`, `limits.max_inflight`).
fn leaf_keys(text: &str) -> BTreeSet<String> {
    fn walk(prefix: &str, table: &toml::Table, keys: &mut BTreeSet<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) => walk(&path, inner, keys),
                _ => {
                    keys.insert(path);
                }
            }
        }
    }
    let table: toml::Table = text.parse().expect("--print-config prints TOML");
    let mut keys = BTreeSet::new();
    walk("", &table, &mut keys);
    keys
}

/// Keys that a commented example file documents: `key = ...` lines, set or commented
/// out (`# key = ...`), under the last `[table]` (or `# [table]`) header above them.
fn documented_keys(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut table = String::new();
    for line in text.lines() {
        let line = line.trim();
        let line = line.strip_prefix('#').map_or(line, str::trim);
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if is_key(name.replace('.', "_").as_str()) {
                table = name.to_owned();
            }
            continue;
        }
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if is_key(key) {
            keys.insert(if table.is_empty() {
                key.to_owned()
            } else {
                format!("{table}.{key}")
            });
        }
    }
    keys
}

fn is_key(word: &str) -> bool {
    !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `CUTIE_LIMITS__MAX_INFLIGHT` -> `limits.max_inflight`.
fn key_of_variable(name: &str) -> String {
    name.trim_start_matches("CUTIE_")
        .to_ascii_lowercase()
        .replace("__", ".")
}

/// `CUTIE_*=value` assignments on lines that are not comments, as written in a
/// Dockerfile `ENV` or a systemd `Environment=` line.
fn assignments(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .flat_map(str::split_whitespace)
        .filter_map(|word| {
            let word = word.strip_prefix("Environment=").unwrap_or(word);
            let (name, value) = word.split_once('=')?;
            name.starts_with("CUTIE_")
                .then(|| (name.to_owned(), value.trim_matches('"').to_owned()))
        })
        .collect()
}

/// `CUTIE_*` variables of a Kubernetes manifest: each `- name: CUTIE_X` with the
/// `value:` on the next line, or `None` for a `valueFrom:`.
fn manifest_env(text: &str) -> Vec<(String, Option<String>)> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let mut env = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.strip_prefix("- name:").map(str::trim) else {
            continue;
        };
        if !name.starts_with("CUTIE_") {
            continue;
        }
        let value = lines
            .get(i + 1)
            .and_then(|next| next.strip_prefix("value:"))
            .map(|value| value.trim().trim_matches('"').to_owned());
        env.push((name.to_owned(), value));
    }
    env
}

fn printed_default_keys() -> BTreeSet<String> {
    let output = print_config(&[], &[]);
    leaf_keys(&assert_success(&output, "no configuration"))
}

/// Checks that every variable names a key (CUTIE_CONFIG names the file instead) and
/// that the broker accepts the literal values together with `config`.
fn assert_env_accepted(source: &str, env: &[(String, Option<String>)], config: &Path) {
    let keys = printed_default_keys();
    assert!(!env.is_empty(), "{source} sets no CUTIE_* variable");
    let mut literal = Vec::new();
    for (name, value) in env {
        if name == "CUTIE_CONFIG" {
            continue;
        }
        let key = key_of_variable(name);
        assert!(
            keys.contains(&key),
            "{source} sets {name}, but the broker has no key {key}"
        );
        if let Some(value) = value {
            literal.push((name.clone(), value.clone()));
        }
    }
    let config = config.to_str().expect("utf-8 path");
    let output = print_config(&["--config", config], &literal);
    // An unknown variable would only be a warning: look for one.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("not a configuration key"),
        "{source}: {stderr}"
    );
    assert_success(&output, source);
}

#[test]
fn example_config_loads() {
    let path = deploy_dir().join("cutie.toml");
    let output = print_config(&["--config", path.to_str().expect("utf-8 path")], &[]);
    assert_success(&output, "deploy/cutie.toml");
}

#[test]
fn example_config_documents_every_key_the_broker_prints() {
    let printed = printed_default_keys();
    assert!(
        printed.contains("listener.tcp"),
        "parsing --print-config: {printed:?}"
    );
    let documented = documented_keys(&read(&deploy_dir().join("cutie.toml")));
    let missing: Vec<&String> = printed.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "deploy/cutie.toml does not document {missing:?}: add each with its meaning and default"
    );
}

#[test]
fn kubernetes_config_loads() {
    let path = deploy_dir().join("kubernetes/cutie.toml");
    let output = print_config(&["--config", path.to_str().expect("utf-8 path")], &[]);
    assert_success(&output, "deploy/kubernetes/cutie.toml");
}

#[test]
fn dockerfile_environment_is_accepted() {
    let env: Vec<_> = assignments(&read(&deploy_dir().join("Dockerfile")))
        .into_iter()
        .map(|(name, value)| (name, Some(value)))
        .collect();
    assert_env_accepted("deploy/Dockerfile", &env, &deploy_dir().join("cutie.toml"));
}

#[test]
fn systemd_environment_is_accepted() {
    let env: Vec<_> = assignments(&read(&deploy_dir().join("systemd/cutie.service")))
        .into_iter()
        .map(|(name, value)| (name, Some(value)))
        .collect();
    assert_env_accepted(
        "deploy/systemd/cutie.service",
        &env,
        &deploy_dir().join("cutie.toml"),
    );
}

#[test]
fn statefulset_environment_is_accepted() {
    let manifest = read(&deploy_dir().join("kubernetes/statefulset.yaml"));
    assert_env_accepted(
        "deploy/kubernetes/statefulset.yaml",
        &manifest_env(&manifest),
        &deploy_dir().join("kubernetes/cutie.toml"),
    );
    // Kubernetes would otherwise inject CUTIE_SERVICE_HOST, CUTIE_PORT, ... for the
    // Service named `cutie`, which nothing in the pod needs.
    assert!(
        manifest.contains("enableServiceLinks: false"),
        "the StatefulSet must turn off Service environment variables"
    );
}

#[test]
fn documented_keys_reads_set_and_commented_keys_per_table() {
    let text = "# about shards\n# shards = 4\npin_cores = true\n\n[limits]\n\
                # Default: 10.\nmax_inflight = 32\n# [later]\n# key = 1\n";
    let keys: Vec<String> = documented_keys(text).into_iter().collect();
    assert_eq!(
        keys,
        ["later.key", "limits.max_inflight", "pin_cores", "shards"]
    );
}
