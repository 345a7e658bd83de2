//! The Helm chart of `deploy/helm/trading-backend` as each service's tests check it: rendered by
//! the real `helm template`, its container for the service must set every setting the service
//! reads (each field of its `Config`, nested fields joined by `__`), and every setting the chart
//! leaves at its default must equal the code's default, so the chart cannot drift from the code.
//!
//! helm comes from `HELM`, else the cache `infra/test` builds it into, else `PATH`.

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use anyhow::{Context, bail, ensure};
use serde::Serialize;
use serde_json::Value;

/// The settings the chart derives from the cluster (addresses, logins, mounted files, the pod's
/// name) rather than copying the code's defaults, which are the local stack's.
const FROM_THE_CLUSTER: [&str; 16] = [
    "LISTEN_ADDR",
    "REGION",
    "INSTANCE",
    "JS_DOMAIN",
    "NATS_URL",
    "REDIS_URL",
    "CASSANDRA_CONTACT_POINTS",
    "NATS_LOGIN__USER",
    "NATS_LOGIN__PASSWORD_FILE",
    "REDIS_LOGIN__USER",
    "REDIS_LOGIN__PASSWORD_FILE",
    "PAGE_TOKEN_KEY_FILE",
    "EDGE__TLS_CERT_FILE",
    "EDGE__TLS_KEY_FILE",
    "EDGE__TOKEN_PUBLIC_KEY_FILE",
    "EDGE__METRICS_ADDR",
];

/// The chart's directory.
pub fn chart() -> PathBuf {
    // testkit sits at the root of the workspace.
    let testkit = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    testkit
        .parent()
        .unwrap_or(&testkit)
        .join("deploy")
        .join("helm")
        .join("trading-backend")
}

/// The helm binary (see the module header).
pub fn helm() -> PathBuf {
    if let Some(helm) = std::env::var_os("HELM") {
        return helm.into();
    }
    let cached = std::env::var_os("TRADING_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/trading-backend"))
        })
        .map(|cache| cache.join(format!("helm-{}", HELM_VERSION)).join("helm"));
    match cached {
        Some(path) if path.exists() => path,
        _ => "helm".into(),
    }
}

/// The helm release `infra/test` builds from the Go module proxy.
pub const HELM_VERSION: &str = "v3.22.0";

/// `helm template` of the chart with `args` (values files, `--set`s); the manifests as text.
pub fn render(args: &[&str]) -> anyhow::Result<String> {
    let helm = helm();
    let output = Command::new(&helm)
        .arg("template")
        .arg("t")
        .arg(chart())
        .args(args)
        .output()
        .with_context(|| {
            format!(
                "cannot run {} (infra/test builds it; or set HELM)",
                helm.display()
            )
        })?;
    ensure!(
        output.status.success(),
        "helm template {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// The chart with every service on, at the defaults of `values.yaml`, and cluster addresses.
pub fn render_all() -> anyhow::Result<String> {
    render(&[
        "--set",
        "writeRegion.enabled=true,relay.enabled=true",
        "--set",
        "store.contactPoints={store:9042},nats.hubUrl=nats://hub:4222",
        "--set",
        "readRegions[0].name=eu,readRegions[0].natsUrl=nats://leaf:4222,readRegions[0].redisUrl=redis://redis:6379",
    ])
}

/// Every setting a config has, as `(environment name without prefix, default)`.
pub fn settings(config: &impl Serialize) -> anyhow::Result<Vec<(String, Value)>> {
    fn flatten(prefix: &str, value: Value, out: &mut Vec<(String, Value)>) {
        match value {
            Value::Object(fields) => {
                for (name, value) in fields {
                    let name = format!("{prefix}{}", name.to_uppercase());
                    if value.is_object() {
                        flatten(&format!("{name}__"), value, out);
                    } else {
                        out.push((name, value));
                    }
                }
            }
            other => out.push((prefix.to_owned(), other)),
        }
    }
    let mut out = Vec::new();
    flatten("", serde_json::to_value(config)?, &mut out);
    Ok(out)
}

/// The environment of the Deployment `t-<component>` in `manifests`: name -> value (`None` for
/// a value taken from elsewhere, such as the pod's name).
pub fn environment(
    manifests: &str,
    component: &str,
) -> anyhow::Result<BTreeMap<String, Option<String>>> {
    let name = format!("  name: t-{component}\n");
    let Some(document) = manifests
        .split("\n---")
        .find(|document| document.contains("\nkind: Deployment\n") && document.contains(&name))
    else {
        bail!("no Deployment t-{component} in the rendered chart");
    };
    let mut environment = BTreeMap::new();
    let mut lines = document.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(variable) = line.trim().strip_prefix("- name: ") else {
            continue;
        };
        if !variable.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            continue;
        }
        let value = match lines.peek().map(|next| next.trim()) {
            Some(next) if next.starts_with("value: ") => {
                let text = &next["value: ".len()..];
                // `quote` writes a double-quoted string with JSON's escapes.
                Some(serde_json::from_str::<String>(text).unwrap_or_else(|_| text.to_owned()))
            }
            _ => None,
        };
        environment.insert(variable.to_owned(), value);
    }
    Ok(environment)
}

/// The code default of a setting as the environment would spell it.
fn spelled(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Checks that the chart's container for `component` sets every setting of `config` under
/// `prefix`, and that those it copies from `values.yaml` equal the code's defaults; `test_only`
/// names settings no deployment may set (with why, at the call).
pub fn check_settings(
    component: &str,
    prefix: &str,
    config: &impl Serialize,
    test_only: &[&str],
) -> anyhow::Result<()> {
    let manifests = render_all()?;
    let environment = environment(&manifests, component)?;
    let mut problems = Vec::new();
    for (name, default) in settings(config)? {
        let variable = format!("{prefix}{name}");
        if test_only.contains(&name.as_str()) {
            if environment.contains_key(&variable) {
                problems.push(format!("{variable} is test-only and must not be deployed"));
            }
            continue;
        }
        match environment.get(&variable) {
            None => problems.push(format!(
                "{variable} is not set (code default {})",
                spelled(&default)
            )),
            Some(Some(value))
                if !FROM_THE_CLUSTER.contains(&name.as_str()) && *value != spelled(&default) =>
            {
                problems.push(format!(
                    "{variable} = {value:?} in values.yaml, the code's default is {:?}",
                    spelled(&default)
                ));
            }
            Some(_) => {}
        }
    }
    ensure!(
        problems.is_empty(),
        "the chart's {component}:\n  {}",
        problems.join("\n  ")
    );
    Ok(())
}
