//! RBAC mode: who is calling (bearer-token authentication) and may they (RBAC authorization),
//! decided the way kube-apiserver decides with `--token-auth-file` and
//! `--authorization-mode=RBAC`. Pure policy: the HTTP middleware and the
//! SelfSubjectAccessReview / rbac.authorization.k8s.io handlers live in `api::rbac`.
//!
//! Followed behaviour (cited in the tests too):
//! - request attributes (verb from the HTTP method, `list`/`watch`/`deletecollection`,
//!   resource, subresource, name, namespace; the namespace of a Namespace is its name):
//!   `staging/src/k8s.io/apiserver/pkg/endpoints/request/requestinfo.go`;
//! - rule matching (`*`, `*/subresource`, resourceNames, nonResourceURLs with a trailing `*`)
//!   and binding subjects (User, Group, ServiceAccount whose namespace defaults to the
//!   binding's): `pkg/registry/rbac/validation/rule.go`, `plugin/pkg/auth/authorizer/rbac/rbac.go`;
//! - the default roles and bindings (cluster-admin for `system:masters`, discovery, basic
//!   user): <https://kubernetes.io/docs/reference/access-authn-authz/rbac/#default-roles-and-role-bindings>;
//! - service-account identities `system:serviceaccount:<ns>:<name>` with the groups
//!   `system:serviceaccounts`, `system:serviceaccounts:<ns>`, `system:authenticated`, and the
//!   static token file format `token,user,uid,"group1,group2"`:
//!   <https://kubernetes.io/docs/reference/access-authn-authz/authentication/>;
//! - the 403 message `<resource>.<group> "<name>" is forbidden: User "<u>" cannot <verb>
//!   resource "<res>/<sub>" in API group "<g>" in the namespace "<ns>"`:
//!   `staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go`.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde_json::{json, Value};

use crate::error::Status;

/// An authenticated (or anonymous) caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    /// The identity a service account's token authenticates as.
    pub fn service_account(namespace: &str, name: &str) -> UserInfo {
        UserInfo {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }

    /// A member of `system:masters`, which the default `cluster-admin` binding lets do anything.
    pub fn admin() -> UserInfo {
        UserInfo {
            name: "kubesim-admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }

    /// A request without credentials (anonymous authentication is on by default).
    pub fn anonymous() -> UserInfo {
        UserInfo {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }
}

/// The settings of RBAC mode.
#[derive(Debug, Clone, Default)]
pub struct RbacConfig {
    /// YAML or JSON documents (several per string, `---` separated; e.g. the output of
    /// `kubectl kustomize deploy/base`). Role, ClusterRole, RoleBinding and ClusterRoleBinding
    /// documents become the policy; other kinds are ignored here.
    pub manifests: Vec<String>,
    /// Bearer token -> identity.
    pub tokens: Vec<(String, UserInfo)>,
}

impl RbacConfig {
    /// Adds a token that authenticates as the service account `namespace/name`.
    pub fn service_account_token(mut self, token: &str, namespace: &str, name: &str) -> Self {
        self.tokens
            .push((token.into(), UserInfo::service_account(namespace, name)));
        self
    }

    pub fn manifest(mut self, yaml: impl Into<String>) -> Self {
        self.manifests.push(yaml.into());
        self
    }

    /// Reads a static token file (`token,user,uid,"group1,group2"` per line), as
    /// kube-apiserver's `--token-auth-file`. Users named `system:serviceaccount:<ns>:<name>`
    /// also get the service-account groups.
    pub fn token_file(mut self, text: &str) -> Result<Self, String> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.splitn(4, ',');
            let (Some(token), Some(user)) = (parts.next(), parts.next()) else {
                return Err(format!("token file line {}: want token,user,uid", n + 1));
            };
            let _uid = parts.next();
            let mut groups: Vec<String> = parts
                .next()
                .map(|g| g.trim().trim_matches('"'))
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(String::from)
                .collect();
            let user = user.trim();
            let mut info = match user
                .strip_prefix("system:serviceaccount:")
                .and_then(|r| r.split_once(':'))
            {
                Some((ns, name)) => UserInfo::service_account(ns, name),
                None => UserInfo {
                    name: user.into(),
                    groups: vec!["system:authenticated".into()],
                },
            };
            groups.retain(|g| !info.groups.contains(g));
            info.groups.extend(groups);
            self.tokens.push((token.trim().into(), info));
        }
        Ok(self)
    }
}

/// What a request asks to do: kube-apiserver's authorizer.Attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    /// False for non-resource paths (`/version`, `/apis`, ...).
    pub resource_request: bool,
    pub path: String,
    pub api_group: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

/// Subresources of a Namespace, which keep `namespaces` as the resource.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

impl Attributes {
    /// The attributes of an HTTP request, as requestinfo.go derives them.
    pub fn from_request(method: &str, path: &str, query: Option<&str>) -> Attributes {
        let mut a = Attributes {
            path: path.to_string(),
            ..Default::default()
        };
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let rest: &[&str] = match parts.as_slice() {
            ["api", version, rest @ ..] if !version.is_empty() && !rest.is_empty() => rest,
            ["apis", group, version, rest @ ..] if !rest.is_empty() && !version.is_empty() => {
                a.api_group = (*group).to_string();
                rest
            }
            _ => {
                a.verb = method.to_ascii_lowercase();
                return a;
            }
        };
        a.resource_request = true;
        let mut rest = rest;
        if rest[0] == "namespaces" && rest.len() > 1 {
            a.namespace = rest[1].to_string();
            if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
                rest = &rest[2..];
            }
        }
        a.resource = rest[0].to_string();
        a.name = rest.get(1).map(|s| s.to_string()).unwrap_or_default();
        a.subresource = rest.get(2).map(|s| s.to_string()).unwrap_or_default();
        let watch = query.is_some_and(|q| {
            q.split('&')
                .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"))
        });
        a.verb = match (method, a.name.is_empty()) {
            ("GET" | "HEAD", _) if watch => "watch",
            ("GET" | "HEAD", true) => "list",
            ("GET" | "HEAD", false) => "get",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "deletecollection",
            ("DELETE", false) => "delete",
            _ => "",
        }
        .to_string();
        a
    }

    /// `resource/subresource` as rules name it.
    fn combined_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }

    /// The 403 answer, with the real server's message.
    pub fn forbidden(&self, user: &UserInfo) -> Status {
        let detail = if !self.resource_request {
            format!(
                "User {:?} cannot {} path {:?}",
                user.name, self.verb, self.path
            )
        } else if self.namespace.is_empty() {
            format!(
                "User {:?} cannot {} resource {:?} in API group {:?} at the cluster scope",
                user.name,
                self.verb,
                self.combined_resource(),
                self.api_group
            )
        } else {
            format!(
                "User {:?} cannot {} resource {:?} in API group {:?} in the namespace {:?}",
                user.name,
                self.verb,
                self.combined_resource(),
                self.api_group,
                self.namespace
            )
        };
        let qualified = if self.api_group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.api_group)
        };
        // apimachinery's NewForbidden: an empty resource (a non-resource path) gives
        // "forbidden: ...".
        let message = if qualified.is_empty() {
            format!("forbidden: {detail}")
        } else if self.name.is_empty() {
            format!("{qualified} is forbidden: {detail}")
        } else {
            format!("{qualified} {:?} is forbidden: {detail}", self.name)
        };
        let mut details = json!({ "kind": self.resource });
        if !self.api_group.is_empty() {
            details["group"] = json!(self.api_group);
        }
        if !self.name.is_empty() {
            details["name"] = json!(self.name);
        }
        let mut status = Status::new(403, "Forbidden", message);
        status.details = Some(details);
        status
    }
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

fn rule_allows(rule: &PolicyRule, a: &Attributes) -> bool {
    if !has(&rule.verbs, &a.verb) {
        return false;
    }
    if !a.resource_request {
        return rule.non_resource_urls.iter().flatten().any(|u| {
            u == "*" || *u == a.path || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
        });
    }
    if !rule
        .api_groups
        .as_deref()
        .is_some_and(|g| has(g, &a.api_group))
    {
        return false;
    }
    let combined = a.combined_resource();
    let resource_ok = rule.resources.iter().flatten().any(|r| {
        r == "*"
            || *r == combined
            || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource.as_str()))
    });
    if !resource_ok {
        return false;
    }
    match rule.resource_names.as_deref() {
        None | Some([]) => true,
        Some(names) => !a.name.is_empty() && names.contains(&a.name),
    }
}

/// The RBAC objects of the cluster: the authorizer's policy, and what the
/// rbac.authorization.k8s.io/v1 API serves.
#[derive(Default)]
pub struct Policy {
    pub roles: BTreeMap<(String, String), Role>,
    pub role_bindings: BTreeMap<(String, String), RoleBinding>,
    pub cluster_roles: BTreeMap<String, ClusterRole>,
    pub cluster_role_bindings: BTreeMap<String, ClusterRoleBinding>,
}

fn subject_matches(
    subjects: Option<&Vec<k8s_openapi::api::rbac::v1::Subject>>,
    user: &UserInfo,
    binding_ns: &str,
) -> bool {
    subjects
        .into_iter()
        .flatten()
        .any(|s| match s.kind.as_str() {
            "User" => s.name == user.name,
            "Group" => user.groups.contains(&s.name),
            "ServiceAccount" => {
                let ns = s
                    .namespace
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .unwrap_or(binding_ns);
                user.name == format!("system:serviceaccount:{ns}:{}", s.name)
            }
            _ => false,
        })
}

impl Policy {
    /// Kubernetes' default roles and bindings that matter here.
    pub fn bootstrap() -> Policy {
        let bootstrap: Value = json!([
            {"kind": "ClusterRole", "metadata": {"name": "cluster-admin"}, "rules": [
                {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                {"nonResourceURLs": ["*"], "verbs": ["*"]}]},
            {"kind": "ClusterRoleBinding", "metadata": {"name": "cluster-admin"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:masters"}]},
            {"kind": "ClusterRole", "metadata": {"name": "system:discovery"}, "rules": [
                {"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez",
                    "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], "verbs": ["get"]}]},
            {"kind": "ClusterRoleBinding", "metadata": {"name": "system:discovery"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:discovery"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}]},
            {"kind": "ClusterRole", "metadata": {"name": "system:public-info-viewer"}, "rules": [
                {"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}]},
            {"kind": "ClusterRoleBinding", "metadata": {"name": "system:public-info-viewer"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:public-info-viewer"},
             "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"},
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:unauthenticated"}]},
            {"kind": "ClusterRole", "metadata": {"name": "system:basic-user"}, "rules": [
                {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
                {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}]},
            {"kind": "ClusterRoleBinding", "metadata": {"name": "system:basic-user"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:basic-user"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}]},
        ]);
        let mut p = Policy::default();
        for doc in bootstrap.as_array().into_iter().flatten() {
            let mut doc = doc.clone();
            doc["apiVersion"] = json!("rbac.authorization.k8s.io/v1");
            // The literal above is well-formed; a failure here is a bug caught by every test.
            p.insert(doc).expect("bootstrap RBAC object");
        }
        p
    }

    /// Adds or replaces an RBAC object given as JSON; other kinds are ignored (Ok(false)).
    pub fn insert(&mut self, doc: Value) -> Result<bool, String> {
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ns = doc
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let label = format!("{kind} {name}");
        let bad = |e: serde_json::Error| format!("{label}: {e}");
        match kind.as_str() {
            "Role" => {
                self.roles
                    .insert((ns, name), serde_json::from_value(doc).map_err(bad)?);
            }
            "RoleBinding" => {
                self.role_bindings
                    .insert((ns, name), serde_json::from_value(doc).map_err(bad)?);
            }
            "ClusterRole" => {
                self.cluster_roles
                    .insert(name, serde_json::from_value(doc).map_err(bad)?);
            }
            "ClusterRoleBinding" => {
                self.cluster_role_bindings
                    .insert(name, serde_json::from_value(doc).map_err(bad)?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// True when some binding that applies to `user` grants `a`.
    pub fn allows(&self, user: &UserInfo, a: &Attributes) -> bool {
        let cluster_rules = |name: &str| {
            self.cluster_roles
                .get(name)
                .and_then(|r| r.rules.clone())
                .unwrap_or_default()
        };
        for crb in self.cluster_role_bindings.values() {
            if crb.role_ref.kind == "ClusterRole"
                && subject_matches(crb.subjects.as_ref(), user, "")
                && cluster_rules(&crb.role_ref.name)
                    .iter()
                    .any(|r| rule_allows(r, a))
            {
                return true;
            }
        }
        if a.namespace.is_empty() {
            return false;
        }
        for ((ns, _), rb) in self
            .role_bindings
            .range((a.namespace.clone(), String::new())..)
            .take_while(|((ns, _), _)| *ns == a.namespace)
        {
            if !subject_matches(rb.subjects.as_ref(), user, ns) {
                continue;
            }
            let rules = match rb.role_ref.kind.as_str() {
                "Role" => self
                    .roles
                    .get(&(ns.clone(), rb.role_ref.name.clone()))
                    .and_then(|r| r.rules.clone())
                    .unwrap_or_default(),
                "ClusterRole" => cluster_rules(&rb.role_ref.name),
                _ => vec![],
            };
            if rules.iter().any(|r| rule_allows(r, a)) {
                return true;
            }
        }
        false
    }
}

/// Splits YAML/JSON manifest text into JSON documents (empty documents skipped; `List` kinds
/// expanded to their items).
pub fn parse_manifests(text: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).map_err(|e| format!("manifest: {e}"))?;
        match v {
            Value::Null => {}
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => out
                .extend(
                    m.get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                ),
            v => out.push(v),
        }
    }
    Ok(out)
}

/// Authentication plus authorization of a simulator in RBAC mode.
pub struct Rbac {
    tokens: HashMap<String, UserInfo>,
    pub policy: RwLock<Policy>,
}

/// A token was given and it is not valid (401).
#[derive(Debug)]
pub struct Unauthenticated;

impl Rbac {
    /// The bootstrap policy plus the RBAC objects of `config.manifests`.
    pub fn new(config: &RbacConfig) -> Result<Rbac, String> {
        let mut policy = Policy::bootstrap();
        for text in &config.manifests {
            for doc in parse_manifests(text)? {
                policy.insert(doc)?;
            }
        }
        let mut tokens: HashMap<String, UserInfo> = config.tokens.iter().cloned().collect();
        tokens
            .entry(crate::ADMIN_TOKEN.to_string())
            .or_insert_with(UserInfo::admin);
        Ok(Rbac {
            tokens,
            policy: RwLock::new(policy),
        })
    }

    /// Who presents `authorization` (the header's value): anonymous without one, an error for
    /// an unknown token.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<UserInfo, Unauthenticated> {
        let Some(header) = authorization else {
            return Ok(UserInfo::anonymous());
        };
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or(Unauthenticated)?;
        self.tokens.get(token).cloned().ok_or(Unauthenticated)
    }

    /// Deletes the Roles and RoleBindings of a namespace being deleted.
    pub fn forget_namespace(&self, namespace: &str) {
        let mut policy = self.policy.write().unwrap_or_else(|p| p.into_inner());
        policy.roles.retain(|(ns, _), _| ns != namespace);
        policy.role_bindings.retain(|(ns, _), _| ns != namespace);
    }

    pub fn allows(&self, user: &UserInfo, a: &Attributes) -> bool {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .allows(user, a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_attributes_follow_requestinfo() {
        let a = Attributes::from_request("GET", "/api/v1/namespaces/ns/pods/p/log", None);
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.subresource.as_str()),
            ("get", "pods", "log")
        );
        assert_eq!((a.namespace.as_str(), a.name.as_str()), ("ns", "p"));
        let a = Attributes::from_request(
            "GET",
            "/apis/batch/v1/namespaces/ns/jobs",
            Some("watch=true&labelSelector=x"),
        );
        assert_eq!((a.verb.as_str(), a.api_group.as_str()), ("watch", "batch"));
        let a = Attributes::from_request("DELETE", "/api/v1/namespaces/ns/pods", None);
        assert_eq!(a.verb, "deletecollection");
        let a = Attributes::from_request("DELETE", "/api/v1/namespaces/gone", None);
        assert_eq!(
            (a.resource.as_str(), a.namespace.as_str(), a.name.as_str()),
            ("namespaces", "gone", "gone")
        );
        let a = Attributes::from_request("GET", "/apis/batch/v1", None);
        assert!(!a.resource_request);
    }

    #[test]
    fn forbidden_message_is_the_api_servers() {
        let a = Attributes::from_request("POST", "/apis/batch/v1/namespaces/default/jobs", None);
        let s = a.forbidden(&UserInfo::service_account("ns", "sa"));
        assert_eq!(
            s.message,
            r#"jobs.batch is forbidden: User "system:serviceaccount:ns:sa" cannot create resource "jobs" in API group "batch" in the namespace "default""#
        );
    }

    #[test]
    fn token_file_lines_become_identities() {
        let c = RbacConfig::default()
            .token_file("t1,system:serviceaccount:a:b,uid1\nt2,alice,uid2,\"dev,ops\"\n")
            .unwrap();
        assert_eq!(c.tokens[0].1, UserInfo::service_account("a", "b"));
        assert_eq!(c.tokens[1].1.name, "alice");
        assert!(c.tokens[1].1.groups.contains(&"ops".to_string()));
    }
}
