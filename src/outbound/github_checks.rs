//! GitHub Apps and the Checks API: the app signs a short JWT (RS256, `iss` = app id) with its
//! private key and trades it for an installation token
//! (`POST /app/installations/{id}/access_tokens`), cached until shortly before it expires; the
//! first report of a run creates a check run (`POST /repos/{owner}/{repo}/check-runs`, with the
//! run's id as `external_id`), later ones update it (`PATCH .../check-runs/{id}`).

use super::{endpoint, secret_header, send, Answer};
use crate::domain::report::check_state;
use crate::domain::RunStatus;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One check run report.
pub struct CheckReport<'a> {
    pub api_base: &'a str,
    pub repository: &'a str,
    pub sha: &'a str,
    /// The check run's name.
    pub context: &'a str,
    pub status: RunStatus,
    pub description: String,
    pub target_url: Option<String>,
    pub run_id: uuid::Uuid,
    pub app_id: i64,
    pub installation_id: i64,
    pub private_key: &'a str,
    /// The run's check run, once created.
    pub check_run_id: Option<i64>,
}

/// An installation: (API base, app id, installation id).
type Installation = (String, i64, i64);

/// Installation tokens by installation, with when to stop using them.
#[derive(Default)]
pub struct Installations {
    tokens: Mutex<HashMap<Installation, (String, Instant)>>,
}

/// Installation tokens last an hour; one is not used in its last five minutes.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);

/// The app's JWT: valid from a minute ago (clock drift, as GitHub advises) for nine minutes.
fn app_jwt(app_id: i64, private_key: &str) -> Result<String, String> {
    #[derive(serde::Serialize)]
    struct Claims {
        iat: i64,
        exp: i64,
        iss: String,
    }
    let now = chrono::Utc::now().timestamp();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_key.as_bytes())
        .map_err(|e| format!("the app's private key does not parse: {e}"))?;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &Claims {
            iat: now - 60,
            exp: now + 540,
            iss: app_id.to_string(),
        },
        &key,
    )
    .map_err(|e| format!("signing the app's JWT failed: {e}"))
}

impl Installations {
    /// An installation token, minted when none is cached; `Err` is the mint's answer.
    async fn token(
        &self,
        client: &reqwest::Client,
        report: &CheckReport<'_>,
    ) -> Result<String, (Answer, bool)> {
        let key = (
            report.api_base.to_owned(),
            report.app_id,
            report.installation_id,
        );
        if let Some((token, until)) = self.tokens.lock().unwrap().get(&key) {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let jwt = app_jwt(report.app_id, report.private_key)
            .map_err(|text| (Answer::none(text), true))?;
        let installation = report.installation_id.to_string();
        let url = endpoint(
            report.api_base,
            &["app", "installations", &installation, "access_tokens"],
        )
        .map_err(|text| (Answer::none(text), true))?;
        let header =
            secret_header(format!("Bearer {jwt}")).map_err(|text| (Answer::none(text), true))?;
        let answer = send(
            client
                .post(url)
                .header("accept", "application/vnd.github+json")
                .header("x-github-api-version", "2022-11-28")
                .header("authorization", header),
        )
        .await;
        let token = answer
            .json
            .as_ref()
            .and_then(|body| body["token"].as_str())
            .map(str::to_owned);
        match (answer.status, token) {
            (Some(200..=299), Some(token)) => {
                let until = Instant::now() + Duration::from_secs(3600) - TOKEN_MARGIN;
                self.tokens
                    .lock()
                    .unwrap()
                    .insert(key, (token.clone(), until));
                Ok(token)
            }
            _ => Err((
                Answer {
                    // Never the token (there was none), only what went wrong.
                    text: format!("minting an installation token: {}", answer.text),
                    json: None,
                    ..answer
                },
                false,
            )),
        }
    }

    /// Creates or updates the run's check run. Returns the answer, whether it is final whatever
    /// its status (the request could not be made), and the id of a check run it created.
    pub async fn report(
        &self,
        client: &reqwest::Client,
        report: &CheckReport<'_>,
    ) -> (Answer, bool, Option<i64>) {
        let token = match self.token(client, report).await {
            Ok(token) => token,
            Err((answer, unmakeable)) => return (answer, unmakeable, None),
        };
        let Some((owner, name)) = report.repository.split_once('/') else {
            return (
                Answer::none(format!("{:?} is not owner/name", report.repository)),
                true,
                None,
            );
        };
        let (status, conclusion) = check_state(report.status);
        let mut body = json!({
            "name": report.context,
            "status": status,
            "external_id": report.run_id.to_string(),
            "output": {"title": &report.description, "summary": &report.description},
        });
        if let Some(conclusion) = conclusion {
            body["conclusion"] = conclusion.into();
        }
        if let Some(target) = &report.target_url {
            body["details_url"] = target.as_str().into();
        }
        let id = report.check_run_id.map(|id| id.to_string());
        let segments: Vec<&str> = match &id {
            Some(id) => vec!["repos", owner, name, "check-runs", id],
            None => vec!["repos", owner, name, "check-runs"],
        };
        let url = match endpoint(report.api_base, &segments) {
            Ok(url) => url,
            Err(text) => return (Answer::none(text), true, None),
        };
        let header = match secret_header(format!("Bearer {token}")) {
            Ok(header) => header,
            Err(text) => return (Answer::none(text), true, None),
        };
        let request = match id {
            Some(_) => client.patch(url),
            None => {
                body["head_sha"] = report.sha.into();
                client.post(url)
            }
        };
        let answer = send(
            request
                .header("accept", "application/vnd.github+json")
                .header("x-github-api-version", "2022-11-28")
                .header("authorization", header)
                .json(&body),
        )
        .await;
        let created = match (report.check_run_id, answer.status) {
            (None, Some(200..=299)) => answer.json.as_ref().and_then(|b| b["id"].as_i64()),
            _ => None,
        };
        (answer, false, created)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_jwt_is_rs256_with_the_app_as_issuer() {
        let pem = include_str!("../../tests/fixtures/github-app-key.pem");
        let jwt = app_jwt(1234, pem).unwrap();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                jwt.split('.').nth(1).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["iss"], "1234");
        let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
        assert!(
            lifetime <= 600,
            "GitHub takes at most ten minutes: {lifetime}"
        );
        assert!(app_jwt(1234, "not a key").is_err());
    }
}
