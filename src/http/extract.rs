//! Extractors whose rejections are problem+json naming the field at fault.

use super::AppState;
use crate::error::Error;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// A JSON body. Unknown fields are refused (the types deny them), errors name the JSON path, and
/// an empty body reads as `{}` so optional bodies may be left out.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = read_body(req, state.limits.max_body_bytes).await?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            if !content_type.as_deref().is_some_and(is_json) {
                return Err(Error::UnsupportedMediaType(format!(
                    "send the body as application/json (got {})",
                    content_type.as_deref().unwrap_or("no Content-Type")
                )));
            }
            &bytes
        };
        parse(bytes).map(ApiJson)
    }
}

/// Bytes of a body too large that are still read (and thrown away) so that the client, which
/// may still be sending, gets the 413: an HTTP/2 stream whose body is left unread is reset,
/// and clients such as curl then report the reset instead of the answer.
const DRAIN_BYTES: usize = 16 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// The whole body, up to `limit` bytes; a larger one is a 413.
async fn read_body(req: Request, limit: usize) -> Result<bytes::Bytes, Error> {
    let too_large = Error::BodyTooLarge { limit };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body().into_data_stream();
    if declared.is_some_and(|n| n > limit as u64) {
        drain(body).await;
        return Err(too_large);
    }
    let mut read = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|error| Error::MalformedBody {
            message: format!("the body could not be read: {error}"),
            field: None,
        })?;
        if read.len() + chunk.len() > limit {
            drain(body).await;
            return Err(too_large);
        }
        read.extend_from_slice(&chunk);
    }
    Ok(read.freeze())
}

/// Reads and discards the rest of a body, up to [`DRAIN_BYTES`] and [`DRAIN_TIME`].
async fn drain(mut body: axum::body::BodyDataStream) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut drained = 0;
        while let Some(Ok(chunk)) = body.next().await {
            drained += chunk.len();
            if drained > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses JSON, turning serde's errors into field-level problems: syntax errors are 400s,
/// well-formed JSON of the wrong shape is a 422 naming the path.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    // Syntax first, over the whole body, so `{} {}` is malformed rather than "missing field".
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Error::MalformedBody {
            message: format!("the body is not valid JSON: {e}"),
            field: None,
        })?;
    // PostgreSQL cannot store NUL in text or jsonb: refuse it here, for every body, by name.
    if let Some(field) = find_nul(&value, String::new()) {
        return Err(Error::Invalid(crate::domain::Invalid::one(
            field,
            crate::domain::validation::NUL_MESSAGE,
        )));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let message = strip_position(e.inner());
        let field = match unknown_field(&message) {
            Some(name) if path == "." || path.is_empty() => name.to_string(),
            Some(name) if !path.ends_with(name) => format!("{path}.{name}"),
            _ if path == "." => "body".to_string(),
            _ => path,
        };
        Error::Invalid(crate::domain::Invalid::one(field, message))
    })
}

/// The JSON path (as serde_path_to_error writes it: `template.env[2].value`) of the first string
/// or object key that contains NUL.
fn find_nul(value: &serde_json::Value, path: String) -> Option<String> {
    use serde_json::Value;
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::String(text) if text.contains('\0') => {
            Some(if path.is_empty() { "body".into() } else { path })
        }
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            find_nul(
                item,
                format!("{}[{i}]", if path.is_empty() { "body" } else { &path }),
            )
        }),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            if key.contains('\0') {
                Some(join(&key.escape_debug().to_string()))
            } else {
                find_nul(item, join(key))
            }
        }),
        _ => None,
    }
}

/// serde's "unknown field `x`, expected ..." names the field; pull it out.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// serde's "duplicate field `x`" (a query parameter given twice) names the field too.
fn duplicate_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("duplicate field `")?;
    rest.split('`').next()
}

fn strip_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Query parameters; unknown or malformed ones are a 400 naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(query)
            .map(ApiQuery)
            .map_err(|e| {
                let message = e.to_string();
                let field = unknown_field(&message)
                    .or_else(|| duplicate_field(&message))
                    .unwrap_or("query")
                    .to_string();
                Error::bad_request(field, message)
            })
    }
}

/// Path parameters; a segment that does not decode (`%FF` is not UTF-8) is a 400 naming the
/// path, as problem+json like every other refusal (axum's own rejection is plain text).
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(Error::bad_request("path", rejection.body_text())),
        }
    }
}

/// The optional `Idempotency-Key` header.
pub struct IdempotencyKey(pub Option<String>);

/// What an idempotency key may be: 1 to 255 visible ASCII characters.
pub fn valid_idempotency_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic())
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        let valid = value.to_str().ok().filter(|v| valid_idempotency_key(v));
        match valid {
            Some(key) => Ok(IdempotencyKey(Some(key.to_string()))),
            None => Err(Error::bad_request(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Issue 18: an unsupported volume kind is named by its volume (`volumes[i]`), and a bad
    /// field inside a supported kind by its path.
    #[test]
    fn volume_kinds_and_their_fields_are_named_by_path() {
        let field = |body: serde_json::Value| match parse::<crate::domain::RunTemplate>(
            body.to_string().as_bytes(),
        ) {
            Err(Error::Invalid(invalid)) => invalid.0[0].field.clone(),
            other => panic!("not refused: {other:?}"),
        };
        assert_eq!(
            field(
                json!({"image": "x", "volumes": [{"name": "n", "emptyDir": {}}, {"name": "m", "nfs": {}}]})
            ),
            "volumes[1]"
        );
        assert_eq!(
            field(json!({"image": "x", "volumes": [{"name": "n", "emptyDir": {"bogus": 1}}]})),
            "volumes[0].emptyDir.bogus"
        );
    }

    #[test]
    fn nul_is_found_by_its_json_path() {
        let body = json!({"template": {"image": "x", "env": [{"name": "A", "value": "ok"}, {"name": "B", "value": "a\u{0}b"}]}});
        assert_eq!(
            find_nul(&body, String::new()).as_deref(),
            Some("template.env[1].value")
        );
        let key = json!({"labels": {"a\u{0}": "x"}});
        assert_eq!(
            find_nul(&key, String::new()).as_deref(),
            Some("labels.a\\0")
        );
        assert_eq!(find_nul(&json!({"a": ["x", 1, null]}), String::new()), None);
        assert_eq!(
            find_nul(&json!(["\u{0}"]), String::new()).as_deref(),
            Some("body[0]")
        );
    }
}
