//! A container's environment as the kubelet builds it (`makeEnvironmentVariables` in
//! pkg/kubelet/kubelet_pods.go) and the `$(VAR)` expansion of env values, `command` and
//! `args` (third_party/forked/golang/expansion/expand.go, `ExpandContainerCommandAndArgs`):
//!
//! 1. `envFrom`, in order: every key of the ConfigMap's `data` / the Secret's `data`, with
//!    `prefix`; a key that is not a valid env var name (`IsEnvVarName`) is skipped and reported
//!    (`InvalidEnvironmentVariableNames`); a missing source fails unless `optional`;
//! 2. `env`, in order: a `value` has its `$(VAR)` references expanded from what is defined so
//!    far; `valueFrom.secretKeyRef` / `configMapKeyRef` read the key, failing when the object
//!    (`secret "x" not found`) or the key (`couldn't find key k in Secret ns/x`) is missing
//!    unless `optional` (then the variable is left out); `fieldRef` reads the downward API;
//! 3. `command` and `args` expanded with the final environment.
//!
//! A failure is what the kubelet reports as `CreateContainerConfigError`. Reads the store, never
//! writes it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};

use super::{HOST_IP, NODE_NAME};
use crate::store::Store;

/// The resolved environment, in definition order (a redefined name keeps its first place and
/// takes the later value), plus the `InvalidEnvironmentVariableNames` warnings to record.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Resolved {
    pub env: Vec<(String, String)>,
    pub warnings: Vec<String>,
}

impl Resolved {
    fn set(&mut self, name: &str, value: String) {
        match self.env.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.env.push((name.to_string(), value)),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `expansion.Expand` with `MappingFuncFor(vars)`: `$(NAME)` becomes the variable's value, or
/// stays `$(NAME)` when it is not defined; `$$` is an escaped `$`; a `$` before anything else,
/// or an unclosed `$(`, is copied as is.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            let advance = match rest.as_bytes()[0] {
                b'$' => {
                    out.push('$');
                    1
                }
                b'(' => match rest.find(')') {
                    Some(close) => {
                        let name = &rest[1..close];
                        match lookup(name) {
                            Some(v) => out.push_str(&v),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        close + 1
                    }
                    None => {
                        out.push_str("$(");
                        1
                    }
                },
                _ => {
                    // The operator and the next character, copied (whole, for UTF-8).
                    let ch = rest.chars().next().unwrap_or_default();
                    out.push('$');
                    out.push(ch);
                    ch.len_utf8()
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    if checkpoint < input.len() {
        out.push_str(&input[checkpoint..]);
    }
    out
}

/// `validation.IsEnvVarName`: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
pub fn is_env_var_name(s: &str) -> bool {
    let mut chars = s.bytes();
    let ok_first = |b: u8| b.is_ascii_alphabetic() || b == b'-' || b == b'.' || b == b'_';
    match chars.next() {
        Some(b) if ok_first(b) => chars.all(|b| ok_first(b) || b.is_ascii_digit()),
        _ => false,
    }
}

fn downward(pod: &Pod, path: &str) -> String {
    let meta = &pod.metadata;
    let from_map = |m: &Option<BTreeMap<String, String>>, prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .and_then(|k| m.as_ref().and_then(|m| m.get(k)).cloned())
    };
    match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| NODE_NAME.into()),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => HOST_IP.into(),
        "status.podIP" => pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default(),
        _ => from_map(&meta.annotations, "metadata.annotations['")
            .or_else(|| from_map(&meta.labels, "metadata.labels['"))
            .unwrap_or_default(),
    }
}

/// The `data` of a Secret or ConfigMap as strings (a Secret's bytes as the kubelet's
/// `string(v)`, lossily for non-UTF-8).
enum Source {
    Secret(std::sync::Arc<Secret>),
    ConfigMap(std::sync::Arc<ConfigMap>),
}

impl Source {
    fn data(&self) -> Vec<(String, String)> {
        match self {
            Source::Secret(s) => s
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
                .collect(),
            Source::ConfigMap(c) => c
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    fn key(&self, key: &str) -> Option<String> {
        match self {
            Source::Secret(s) => s
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned()),
            Source::ConfigMap(c) => c.data.as_ref().and_then(|d| d.get(key)).cloned(),
        }
    }
}

/// The Secret or ConfigMap `name` in `ns`, or the kubelet's not-found message (its managers
/// answer with the API's NotFound for the resource `secret` / `configmap`).
fn fetch(store: &Store, ns: &str, secret: bool, name: &str) -> Result<Source, String> {
    if secret {
        store
            .get::<Secret>(ns, name)
            .map(Source::Secret)
            .ok_or_else(|| format!("secret \"{name}\" not found"))
    } else {
        store
            .get::<ConfigMap>(ns, name)
            .map(Source::ConfigMap)
            .ok_or_else(|| format!("configmap \"{name}\" not found"))
    }
}

/// The container's environment, or the message of the `CreateContainerConfigError`.
pub fn resolve(store: &Store, pod: &Pod, c: &Container) -> Result<Resolved, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = Resolved::default();
    for from in c.env_from.iter().flatten() {
        let (secret, name, optional) = match (&from.secret_ref, &from.config_map_ref) {
            (Some(s), _) => (true, s.name.clone(), s.optional == Some(true)),
            (None, Some(m)) => (false, m.name.clone(), m.optional == Some(true)),
            (None, None) => continue,
        };
        let source = match fetch(store, &ns, secret, &name) {
            Ok(s) => s,
            Err(_) if optional => continue,
            Err(e) => return Err(e),
        };
        let prefix = from.prefix.clone().unwrap_or_default();
        let mut invalid = Vec::new();
        for (k, v) in source.data() {
            let k = format!("{prefix}{k}");
            if is_env_var_name(&k) {
                out.set(&k, v);
            } else {
                invalid.push(k);
            }
        }
        if !invalid.is_empty() {
            invalid.sort();
            out.warnings.push(format!(
                "Keys [{}] from the EnvFrom {} {ns}/{name} were skipped since they are considered invalid environment variable names.",
                invalid.join(", "),
                if secret { "secret" } else { "configMap" },
            ));
        }
    }
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) if !v.is_empty() => expand(v, |name| out.get(name).map(str::to_string)),
            (_, Some(from)) => {
                let key_ref = match (&from.secret_key_ref, &from.config_map_key_ref) {
                    (Some(s), _) => Some((true, &s.name, &s.key, s.optional == Some(true))),
                    (None, Some(m)) => Some((false, &m.name, &m.key, m.optional == Some(true))),
                    (None, None) => None,
                };
                match (key_ref, &from.field_ref) {
                    (Some((secret, name, key, optional)), _) => {
                        let source = match fetch(store, &ns, secret, name) {
                            Ok(s) => s,
                            Err(_) if optional => continue,
                            Err(e) => return Err(e),
                        };
                        match source.key(key) {
                            Some(v) => v,
                            None if optional => continue,
                            None => {
                                let kind = if secret { "Secret" } else { "ConfigMap" };
                                return Err(format!(
                                    "couldn't find key {key} in {kind} {ns}/{name}"
                                ));
                            }
                        }
                    }
                    (None, Some(f)) => downward(pod, &f.field_path),
                    (None, None) => String::new(),
                }
            }
            _ => String::new(),
        };
        out.set(&e.name, value);
    }
    Ok(out)
}

/// `ExpandContainerCommandAndArgs`: `command` and `args` with `$(VAR)` expanded from the
/// container's final environment.
pub fn expand_command_and_args(c: &mut Container, env: &[(String, String)]) {
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    for list in [c.command.as_mut(), c.args.as_mut()].into_iter().flatten() {
        for item in list.iter_mut() {
            *item = expand(item, lookup);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "VAR_A" => Some("A".into()),
            "VAR_EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    /// The cases of expand_test.go in third_party/forked/golang/expansion.
    #[test]
    fn expansion_follows_the_kubelets_rules() {
        let cases = [
            ("$(VAR_A)", "A"),
            ("___$(VAR_A)___", "___A___"),
            ("$(VAR_A)$(VAR_A)", "AA"),
            ("$(VAR_EMPTY)", ""),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("$$(VAR_A)", "$(VAR_A)"),
            ("$$$(VAR_A)", "$A"),
            ("$$$$(VAR_A)", "$$(VAR_A)"),
            ("$(VAR_A", "$(VAR_A"),
            ("$VAR_A", "$VAR_A"),
            ("$", "$"),
            ("foo$", "foo$"),
            ("$$", "$"),
            ("$()", "$()"),
            ("f$(VAR_A)-$x", "fA-$x"),
            ("é$é", "é$é"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, vars), want, "{input}");
        }
    }

    #[test]
    fn env_var_names_follow_is_env_var_name() {
        for ok in ["A", "a_b", "-x", ".y", "A1", "my.var-name"] {
            assert!(is_env_var_name(ok), "{ok}");
        }
        for bad in ["", "1A", "a b", "a=b", "ä"] {
            assert!(!is_env_var_name(bad), "{bad}");
        }
    }
}
