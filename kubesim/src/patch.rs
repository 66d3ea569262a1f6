//! PATCH bodies: JSON merge patch (RFC 7386), strategic merge patch (the subset of Kubernetes'
//! rules that matters for Job/Pod/Namespace: list merge keys, merged primitive lists such as
//! `finalizers`, and the `$patch` / `$deleteFromPrimitiveList` directives) and JSON patch
//! (RFC 6902). Pure functions on `serde_json::Value`.

use serde_json::{Map, Value};

use crate::error::Status;

/// Which patch format a request uses, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Strategic,
    Json,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<PatchKind> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchKind::Apply)
            }
            _ => None,
        }
    }
}

pub fn apply(kind: PatchKind, target: &Value, patch: &Value) -> Result<Value, Status> {
    match kind {
        PatchKind::Merge | PatchKind::Apply => Ok(merge_patch(target, patch)),
        PatchKind::Strategic => {
            if !patch.is_object() {
                return Err(Status::bad_request(
                    "strategic merge patch must be an object",
                ));
            }
            Ok(strategic(target, patch, ""))
        }
        PatchKind::Json => json_patch(target, patch),
    }
}

pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    match patch {
        Value::Object(p) => {
            let mut out = match target {
                Value::Object(t) => t.clone(),
                _ => Map::new(),
            };
            for (k, v) in p {
                if v.is_null() {
                    out.remove(k);
                } else {
                    let cur = out.get(k).cloned().unwrap_or(Value::Null);
                    out.insert(k.clone(), merge_patch(&cur, v));
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// Merge key of a list field, by field name (Kubernetes' `patchMergeKey` tags).
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "volumeMounts"
        | "ports"
        | "imagePullSecrets"
        | "hostAliases" => Some("name"),
        "ownerReferences" => Some("uid"),
        "conditions" => Some("type"),
        "tolerations" => None,
        _ => None,
    }
}

/// Primitive lists that strategic merge patch merges as sets instead of replacing.
fn merged_primitive_list(field: &str) -> bool {
    matches!(field, "finalizers")
}

fn strategic(target: &Value, patch: &Value, _path: &str) -> Value {
    let (Some(p), t) = (patch.as_object(), target) else {
        return patch.clone();
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = p.clone();
        p.remove("$patch");
        return Value::Object(p);
    }
    if p.get("$patch").and_then(Value::as_str) == Some("delete") {
        return Value::Null;
    }
    let mut out = t.as_object().cloned().unwrap_or_default();
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Some(del)) = (out.get_mut(field), v.as_array()) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            out.remove(k);
            continue;
        }
        let cur = out.get(k).cloned().unwrap_or(Value::Null);
        let merged = match (v, &cur) {
            (Value::Array(pa), Value::Array(ca)) if merged_primitive_list(k) => {
                let mut res = ca.clone();
                for x in pa {
                    if !res.contains(x) {
                        res.push(x.clone());
                    }
                }
                Value::Array(res)
            }
            (Value::Array(pa), Value::Array(ca)) => match merge_key(k) {
                Some(mk) => merge_keyed_list(ca, pa, mk),
                None => Value::Array(pa.clone()),
            },
            (Value::Object(_), _) => strategic(&cur, v, k),
            _ => v.clone(),
        };
        out.insert(k.clone(), merged);
    }
    Value::Object(out)
}

fn merge_keyed_list(cur: &[Value], patch: &[Value], mk: &str) -> Value {
    let mut res: Vec<Value> = cur.to_vec();
    for item in patch {
        let key = item.get(mk);
        let directive = item.get("$patch").and_then(Value::as_str);
        let pos = key.and_then(|k| res.iter().position(|x| x.get(mk) == Some(k)));
        match (pos, directive) {
            (Some(i), Some("delete")) => {
                res.remove(i);
            }
            (None, Some("delete")) => {}
            (Some(i), _) => {
                let m = strategic(&res[i], item, mk);
                res[i] = m;
            }
            (None, _) => res.push(item.clone()),
        }
    }
    Value::Array(res)
}

fn unescape(tok: &str) -> String {
    tok.replace("~1", "/").replace("~0", "~")
}

fn pointer_parts(path: &str) -> Result<Vec<String>, Status> {
    if path.is_empty() {
        return Ok(vec![]);
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| Status::bad_request(format!("invalid JSON pointer {path}")))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn parent_mut<'a>(doc: &'a mut Value, parts: &[String]) -> Result<&'a mut Value, Status> {
    let mut cur = doc;
    for p in parts {
        cur = match cur {
            Value::Object(m) => m.get_mut(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| {
            Status::new(
                422,
                "Invalid",
                format!("doc is missing path: /{}", parts.join("/")),
            )
        })?;
    }
    Ok(cur)
}

fn add_at(doc: &mut Value, path: &str, val: Value) -> Result<(), Status> {
    let parts = pointer_parts(path)?;
    let Some((last, head)) = parts.split_last() else {
        *doc = val;
        return Ok(());
    };
    match parent_mut(doc, head)? {
        Value::Object(m) => {
            m.insert(last.clone(), val);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(val);
            } else {
                let i: usize = last
                    .parse()
                    .map_err(|_| Status::bad_request(format!("invalid index {last}")))?;
                if i > a.len() {
                    return Err(Status::new(
                        422,
                        "Invalid",
                        format!("index out of range: {path}"),
                    ));
                }
                a.insert(i, val);
            }
        }
        _ => {
            return Err(Status::new(
                422,
                "Invalid",
                format!("doc is missing path: {path}"),
            ))
        }
    }
    Ok(())
}

fn remove_at(doc: &mut Value, path: &str) -> Result<Value, Status> {
    let parts = pointer_parts(path)?;
    let Some((last, head)) = parts.split_last() else {
        return Err(Status::bad_request("cannot remove the whole document"));
    };
    let missing = || {
        Status::new(
            422,
            "Invalid",
            format!("doc is missing path: \"{path}\": missing value"),
        )
    };
    match parent_mut(doc, head)? {
        Value::Object(m) => m.remove(last).ok_or_else(missing),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| missing())?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(missing())
            }
        }
        _ => Err(missing()),
    }
}

pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, Status> {
    let ops = patch
        .as_array()
        .ok_or_else(|| Status::bad_request("json patch must be an array of operations"))?;
    let mut doc = target.clone();
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op.get("path").and_then(Value::as_str).unwrap_or("");
        let value = op.get("value").cloned().unwrap_or(Value::Null);
        match kind {
            "add" => add_at(&mut doc, path, value)?,
            "remove" => {
                remove_at(&mut doc, path)?;
            }
            "replace" => {
                remove_at(&mut doc, path)?;
                add_at(&mut doc, path, value)?;
            }
            "test" => {
                let cur = doc.pointer(path).cloned().unwrap_or(Value::Null);
                if cur != value {
                    return Err(Status::new(
                        422,
                        "Invalid",
                        format!("the server rejected our request due to an error in our request: testing value {path} failed"),
                    ));
                }
            }
            "move" | "copy" => {
                let from = op.get("from").and_then(Value::as_str).unwrap_or("");
                let v = if kind == "move" {
                    remove_at(&mut doc, from)?
                } else {
                    doc.pointer(from).cloned().ok_or_else(|| {
                        Status::new(422, "Invalid", format!("doc is missing from path: {from}"))
                    })?
                };
                add_at(&mut doc, path, v)?;
            }
            other => {
                return Err(Status::bad_request(format!("Unexpected kind: {other}")));
            }
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_null_deletes_and_objects_merge() {
        let t = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"suspend": false}});
        let p = json!({"metadata": {"labels": {"a": null, "c": "3"}}, "spec": {"suspend": true}});
        assert_eq!(
            merge_patch(&t, &p),
            json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"suspend": true}})
        );
    }

    #[test]
    fn strategic_patch_merges_finalizers_and_can_delete_from_them() {
        let t = json!({"metadata": {"finalizers": ["a", "b"]}});
        let added = apply(
            PatchKind::Strategic,
            &t,
            &json!({"metadata": {"finalizers": ["c"]}}),
        )
        .unwrap();
        assert_eq!(added["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let removed = apply(
            PatchKind::Strategic,
            &added,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        )
        .unwrap();
        assert_eq!(removed["metadata"]["finalizers"], json!(["b", "c"]));
    }

    #[test]
    fn json_patch_supports_add_remove_replace_and_test() {
        let t = json!({"metadata": {"finalizers": ["a", "b"]}});
        let out = json_patch(
            &t,
            &json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": "a"},
                {"op": "remove", "path": "/metadata/finalizers/0"},
                {"op": "add", "path": "/metadata/labels", "value": {"x": "y"}},
                {"op": "replace", "path": "/metadata/labels/x", "value": "z"}
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"finalizers": ["b"], "labels": {"x": "z"}}})
        );
        assert!(json_patch(
            &t,
            &json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "q"}])
        )
        .is_err());
    }
}
