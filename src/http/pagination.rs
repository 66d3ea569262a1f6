//! Opaque cursors for keyset pagination. A cursor is the key of the last item of a page, encoded
//! so clients don't build or depend on them.

use crate::error::Error;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use uuid::Uuid;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 1000;

pub fn limit(requested: Option<i64>) -> Result<i64, Error> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(Error::bad_request(
            "limit",
            format!("must be between 1 and {MAX_LIMIT} (is {n})"),
        )),
    }
}

/// Turns a fetch of `limit + 1` items into a page: the first `limit`, and the cursor of the last
/// of them when more follow.
pub fn page<T>(
    mut items: Vec<T>,
    limit: i64,
    cursor: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    if items.len() as i64 > limit {
        items.truncate(limit as usize);
        let next = items.last().map(cursor);
        (items, next)
    } else {
        (items, None)
    }
}

pub fn encode_run_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

pub fn decode_run_cursor(cursor: &str) -> Result<Uuid, Error> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .ok_or_else(garbage)
}

pub fn encode_name_cursor(name: &str) -> String {
    URL_SAFE_NO_PAD.encode(name.as_bytes())
}

pub fn decode_name_cursor(cursor: &str) -> Result<String, Error> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        // Names never hold NUL, and PostgreSQL could not compare with it.
        .filter(|name| !name.contains('\0'))
        .ok_or_else(garbage)
}

fn garbage() -> Error {
    Error::bad_request(
        "cursor",
        "is not a cursor this server issued; pass the nextCursor of a previous page",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_cursors_round_trip_and_garbage_is_refused() {
        let id = Uuid::now_v7();
        assert_eq!(decode_run_cursor(&encode_run_cursor(id)).unwrap(), id);
        assert!(decode_run_cursor("not-a-cursor!").is_err());
        assert!(decode_run_cursor("AAAA").is_err());
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(MAX_LIMIT + 1)).is_err());
    }
}
