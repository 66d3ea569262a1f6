//! Gitea and Forgejo commit status: `POST {api}/repos/{owner}/{repo}/statuses/{sha}` with
//! `Authorization: token ...` (the Gitea API's CreateStatusOption). States: pending, success,
//! error, failure (and warning, unused).

use super::{endpoint, secret_header, CommitStatusApi, StatusReport};
use crate::domain::report::ReportProvider;
use serde_json::json;

pub struct Gitea;

impl CommitStatusApi for Gitea {
    fn provider(&self) -> ReportProvider {
        ReportProvider::Gitea
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
            .header(
                "authorization",
                secret_header(format!("token {}", report.token))?,
            )
            .json(&body))
    }
}
