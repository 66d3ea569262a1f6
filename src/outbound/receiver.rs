//! Notifications: a signed POST to a task's receiver. The body is JSON (or a Slack message);
//! `X-Vfi-Delivery` is the message's stable id (the same on every retry, so a receiver can drop
//! duplicates) and `X-Vfi-Signature` is `sha256=` and the hex HMAC-SHA256 of the body with the
//! entry's secret, as GitHub signs its webhooks.

use super::secret_header;
use crate::domain::report::NotifyFormat;
use serde_json::json;

/// What a notification says.
pub struct Notification<'a> {
    pub delivery_id: &'a str,
    /// `failed`, `recovered`, `succeeded`, `cancelled` or `lost`.
    pub event: &'a str,
    pub task: Option<&'a str>,
    pub run_id: Option<uuid::Uuid>,
    pub run_number: Option<i64>,
    pub reason: Option<&'a str>,
    pub message: Option<&'a str>,
    /// The run's dashboard page, when the public base URL is known.
    pub run_url: Option<&'a str>,
}

/// The body for `format`.
pub fn body(notification: &Notification<'_>, format: NotifyFormat) -> Vec<u8> {
    let value = match format {
        NotifyFormat::Json => json!({
            "deliveryId": notification.delivery_id,
            "event": notification.event,
            "task": notification.task,
            "run": {
                "id": notification.run_id,
                "number": notification.run_number,
                "reason": notification.reason,
                "message": notification.message,
                "url": notification.run_url,
            },
        }),
        NotifyFormat::Slack => {
            let mut text = format!(
                "Run {} #{} {}",
                notification.task.unwrap_or("(ad hoc)"),
                notification.run_number.unwrap_or_default(),
                notification.event
            );
            if let Some(reason) = notification.reason {
                text.push_str(&format!(": {reason}"));
            }
            if let Some(url) = notification.run_url {
                text.push_str(&format!(" <{url}|open>"));
            }
            json!({ "text": text })
        }
    };
    serde_json::to_vec(&value).expect("JSON values serialize")
}

/// The signed request.
pub fn request(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    delivery_id: &str,
    event: &str,
    body: Vec<u8>,
) -> Result<reqwest::RequestBuilder, String> {
    let signature = format!("sha256={}", crate::domain::webhook::sign(secret, &body));
    Ok(client
        .post(url)
        .header("content-type", "application/json")
        .header("x-vfi-delivery", delivery_id)
        .header("x-vfi-event", event)
        // The HMAC does not reveal the secret, but nothing derived from it is printed either.
        .header("x-vfi-signature", secret_header(signature)?)
        .body(body))
}
