//! How each Git host authenticates its deliveries (checked in constant time), and where it names
//! the event and the delivery.

use super::Provider;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Checks a delivery's authentication for `provider` with the trigger's `secret`. `header` looks
/// up a request header by lower-case name. The error is the reason, for the logs only.
pub fn verify<'h>(
    provider: Provider,
    secret: &str,
    header: impl Fn(&str) -> Option<&'h str>,
    body: &[u8],
) -> Result<(), String> {
    match provider {
        Provider::Github => {
            let value = header("x-hub-signature-256").ok_or("no X-Hub-Signature-256 header")?;
            let hex_digest = value
                .strip_prefix("sha256=")
                .ok_or("X-Hub-Signature-256 does not start with sha256=")?;
            verify_hmac(secret, hex_digest, body)
        }
        Provider::Gitea => {
            let value = header("x-gitea-signature")
                .or_else(|| header("x-forgejo-signature"))
                .ok_or("no X-Gitea-Signature header")?;
            verify_hmac(secret, value, body)
        }
        Provider::Gitlab => {
            let value = header("x-gitlab-token").ok_or("no X-Gitlab-Token header")?;
            // Comparing digests keeps the comparison constant-time whatever the lengths.
            let given = Sha256::digest(value.as_bytes());
            let expected = Sha256::digest(secret.as_bytes());
            if bool::from(given.ct_eq(&expected)) {
                Ok(())
            } else {
                Err("X-Gitlab-Token does not match the secret".into())
            }
        }
    }
}

fn verify_hmac(secret: &str, hex_digest: &str, body: &[u8]) -> Result<(), String> {
    let digest = hex::decode(hex_digest.trim()).map_err(|_| "the signature is not hex")?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&digest)
        .map_err(|_| "the signature does not match the body and secret".to_string())
}

/// The hex HMAC-SHA256 of `body` under `secret`, as GitHub and Gitea send it.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The provider's event name header (e.g. `push`, `Push Hook`).
pub fn event_name<'h>(
    provider: Provider,
    header: impl Fn(&str) -> Option<&'h str>,
) -> Option<&'h str> {
    match provider {
        Provider::Github => header("x-github-event"),
        Provider::Gitlab => header("x-gitlab-event"),
        Provider::Gitea => header("x-gitea-event").or_else(|| header("x-forgejo-event")),
    }
}

/// The delivery's id, which a redelivery repeats. Hosts that send none get the body's hash, so
/// the same payload delivered twice is still one delivery.
pub fn delivery_id<'h>(
    provider: Provider,
    header: impl Fn(&str) -> Option<&'h str>,
    body: &[u8],
) -> String {
    let given = match provider {
        Provider::Github => header("x-github-delivery"),
        Provider::Gitlab => header("x-gitlab-event-uuid"),
        Provider::Gitea => header("x-gitea-delivery").or_else(|| header("x-forgejo-delivery")),
    };
    match given
        .map(str::trim)
        .filter(|d| !d.is_empty() && d.len() <= 200)
    {
        Some(id) => id.to_string(),
        None => format!("sha256:{}", hex::encode(Sha256::digest(body))),
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn check(provider: Provider, secret: &str, h: &HashMap<String, String>, body: &[u8]) -> bool {
        verify(
            provider,
            secret,
            |name| h.get(name).map(String::as_str),
            body,
        )
        .is_ok()
    }

    #[test]
    fn github_signatures_match_githubs_documented_example() {
        // From GitHub's "Validating webhook deliveries" documentation.
        let body = b"Hello, World!";
        let signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            sign("It's a Secret to Everybody", body),
            signature.trim_start_matches("sha256=")
        );
        let h = headers(&[("x-hub-signature-256", signature)]);
        assert!(check(
            Provider::Github,
            "It's a Secret to Everybody",
            &h,
            body
        ));
        assert!(!check(
            Provider::Github,
            "It's a Secret to Everybody",
            &h,
            b"Hello, World?"
        ));
        assert!(!check(
            Provider::Github,
            "another secret entirely",
            &h,
            body
        ));
        assert!(!check(
            Provider::Github,
            "It's a Secret to Everybody",
            &headers(&[]),
            body
        ));
        let unprefixed = headers(&[("x-hub-signature-256", &signature[7..])]);
        assert!(!check(
            Provider::Github,
            "It's a Secret to Everybody",
            &unprefixed,
            body
        ));
    }

    #[test]
    fn gitea_signatures_are_bare_hex_and_gitlab_tokens_are_the_secret() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let secret = "0123456789abcdef";
        let good = headers(&[("x-gitea-signature", &sign(secret, body))]);
        assert!(check(Provider::Gitea, secret, &good, body));
        let forgejo = headers(&[("x-forgejo-signature", &sign(secret, body))]);
        assert!(check(Provider::Gitea, secret, &forgejo, body));
        assert!(!check(
            Provider::Gitea,
            secret,
            &headers(&[("x-gitea-signature", "zz")]),
            body
        ));

        assert!(check(
            Provider::Gitlab,
            secret,
            &headers(&[("x-gitlab-token", secret)]),
            body
        ));
        assert!(!check(
            Provider::Gitlab,
            secret,
            &headers(&[("x-gitlab-token", "0123456789abcdeF")]),
            body
        ));
        assert!(!check(
            Provider::Gitlab,
            secret,
            &headers(&[("x-gitlab-token", "")]),
            body
        ));
        assert!(!check(Provider::Gitlab, secret, &headers(&[]), body));
    }

    #[test]
    fn delivery_ids_come_from_the_header_or_the_body() {
        let h = headers(&[("x-github-delivery", "abc")]);
        assert_eq!(
            delivery_id(Provider::Github, |n| h.get(n).map(String::as_str), b"x"),
            "abc"
        );
        let none = headers(&[]);
        let a = delivery_id(Provider::Gitlab, |n| none.get(n).map(String::as_str), b"x");
        let b = delivery_id(Provider::Gitlab, |n| none.get(n).map(String::as_str), b"y");
        assert!(a.starts_with("sha256:") && a != b);
    }
}
