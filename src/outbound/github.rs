//! GitHub commit statuses: `POST {api}/repos/{owner}/{repo}/statuses/{sha}` with a token
//! (docs.github.com/en/rest/commits/statuses). States: pending, success, failure, error.

use super::{endpoint, secret_header, CommitStatusApi, StatusReport};
use crate::domain::report::ReportProvider;
use serde_json::json;

pub struct Github;

impl CommitStatusApi for Github {
    fn provider(&self) -> ReportProvider {
        ReportProvider::Github
    }

    fn request(
        &self,
        client: &reqwest::Client,
        report: &StatusReport<'_>,
    ) -> Result<reqwest::RequestBuilder, String> {
        let (owner, name) = report
            .repository
            .split_once('/')
            .ok_or_else(|| format!("{:?} is not owner/name", report.repository))?;
        let url = endpoint(
            report.api_base,
            &["repos", owner, name, "statuses", report.sha],
        )?;
        let mut body = json!({
            "state": self.provider().state(report.status),
            "description": report.description,
            "context": report.context,
        });
        if let Some(target) = report.target_url {
            body["target_url"] = target.into();
        }
        Ok(client
            .post(url)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .header(
                "authorization",
                secret_header(format!("Bearer {}", report.token))?,
            )
            .json(&body))
    }
}
