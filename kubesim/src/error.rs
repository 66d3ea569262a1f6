//! Errors: the crate's [`Error`] (starting the simulator) and [`Status`], the metav1.Status every
//! API failure is answered with. The HTTP status code of an API error is decided here and only
//! here.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// Failure to start or run the simulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("building the kube client: {0}")]
    Client(#[from] kube::Error),
    #[error("invalid URL {0}")]
    Url(String),
    #[error("RBAC mode: {0}")]
    Rbac(String),
}

/// One `details.causes` entry of a 422.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Cause {
        Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Cause {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {value}: {detail}"),
        }
    }
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Cause {
        let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        Cause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: \"{value}\": supported values: {}",
                list.join(", ")
            ),
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Cause {
        Cause {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }
    pub fn too_long(field: impl Into<String>, max: usize) -> Cause {
        Cause {
            reason: "FieldValueTooLong",
            field: field.into(),
            message: format!("Too long: may not be more than {max} bytes"),
        }
    }
}

/// A metav1.Status failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct Status {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    pub retry_after: Option<u32>,
}

fn split_gr(gr: &str) -> (&str, &str) {
    match gr.split_once('.') {
        Some((r, g)) => (r, g),
        None => (gr, ""),
    }
}

impl Status {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Status {
        Status {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    fn with_details(mut self, gr: &str, name: &str) -> Status {
        let (kind, group) = split_gr(gr);
        let mut d = json!({ "name": name, "kind": kind });
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        if name.is_empty() {
            d.as_object_mut().map(|o| o.remove("name"));
        }
        self.details = Some(d);
        self
    }

    pub fn not_found(gr: &str, name: &str) -> Status {
        Status::new(404, "NotFound", format!("{gr} \"{name}\" not found")).with_details(gr, name)
    }

    pub fn already_exists(gr: &str, name: &str) -> Status {
        Status::new(
            409,
            "AlreadyExists",
            format!("{gr} \"{name}\" already exists"),
        )
        .with_details(gr, name)
    }

    pub fn conflict(gr: &str, name: &str) -> Status {
        Status::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {gr} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
        .with_details(gr, name)
    }

    pub fn conflict_precondition_uid(gr: &str, name: &str, want: &str, have: &str) -> Status {
        Status::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {gr} \"{name}\": Precondition failed: UID in precondition: {want}, UID in object meta: {have}"
            ),
        )
        .with_details(gr, name)
    }

    /// 422 Invalid; `kind` is e.g. `Job`, `group` e.g. `batch`.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Status {
        let gk = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let list: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let joined = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let mut details = json!({
            "name": name,
            "kind": kind,
            "causes": causes.iter().map(|c| json!({
                "reason": c.reason, "message": c.message, "field": c.field
            })).collect::<Vec<_>>(),
        });
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        Status {
            code: 422,
            reason: "Invalid",
            message: format!("{gk} \"{name}\" is invalid: {joined}"),
            details: Some(details),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Status {
        Status::new(400, "BadRequest", message)
    }

    pub fn expired(message: impl Into<String>) -> Status {
        Status::new(410, "Expired", message)
    }

    pub fn gone(message: impl Into<String>) -> Status {
        Status::new(410, "Gone", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Status {
        Status::new(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Status {
        Status::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type})"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Status {
        Status::new(500, "InternalError", message)
    }

    /// A status of the given HTTP code with the reason the real server would use for it.
    pub fn from_code(code: u16, retry_after: Option<u32>) -> Status {
        let (reason, message) = match code {
            400 => ("BadRequest", "bad request"),
            401 => ("Unauthorized", "Unauthorized"),
            403 => ("Forbidden", "forbidden"),
            404 => (
                "NotFound",
                "the server could not find the requested resource",
            ),
            409 => ("Conflict", "conflict"),
            410 => ("Expired", "too old resource version"),
            429 => (
                "TooManyRequests",
                "Too many requests, please try again later.",
            ),
            500 => ("InternalError", "Internal error occurred: injected fault"),
            503 => (
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            504 => (
                "Timeout",
                "the server was unable to return a response in the time allotted",
            ),
            _ => ("", "injected fault"),
        };
        let mut s = Status::new(code, reason, message);
        if let Some(secs) = retry_after {
            s.retry_after = Some(secs);
            s.details = Some(json!({ "retryAfterSeconds": secs }));
        }
        s
    }

    /// The metav1.Status JSON document.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        if self.reason.is_empty() {
            v.as_object_mut().map(|o| o.remove("reason"));
        }
        v
    }
}

impl IntoResponse for Status {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (code, axum::Json(self.to_json())).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert("retry-after", v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_group_resource_like_the_real_server() {
        let s = Status::not_found("jobs.batch", "pi");
        let v = s.to_json();
        assert_eq!(v["message"], "jobs.batch \"pi\" not found");
        assert_eq!(v["details"]["group"], "batch");
        assert_eq!(v["details"]["kind"], "jobs");
        assert_eq!(v["code"], 404);
    }

    #[test]
    fn invalid_lists_every_cause_in_the_message() {
        let s = Status::invalid(
            "Job",
            "batch",
            "x",
            vec![Cause::required("spec.a"), Cause::required("spec.b")],
        );
        assert_eq!(
            s.message,
            "Job.batch \"x\" is invalid: [spec.a: Required value, spec.b: Required value]"
        );
        assert_eq!(s.to_json()["details"]["causes"][1]["field"], "spec.b");
    }
}
