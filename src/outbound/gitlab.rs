//! GitLab commit status: `POST {api}/projects/{url-encoded path}/statuses/{sha}` with a project
//! or group token in `PRIVATE-TOKEN` (docs.gitlab.com/api/commits, "Set the pipeline status of a
//! commit"). States: pending, running, success, failed, canceled; the context is `name`.

use super::{endpoint, secret_header, CommitStatusApi, StatusReport};
use crate::domain::report::ReportProvider;
use serde_json::json;

pub struct Gitlab;

impl CommitStatusApi for Gitlab {
    fn provider(&self) -> ReportProvider {
        ReportProvider::Gitlab
    }

    fn request(
        &self,
        client: &reqwest::Client,
        report: &StatusReport<'_>,
    ) -> Result<reqwest::RequestBuilder, String> {
        let url = endpoint(
            report.api_base,
            &["projects", report.repository, "statuses", report.sha],
        )?;
        let mut body = json!({
            "state": self.provider().state(report.status),
            "description": report.description,
            "name": report.context,
        });
        let branch = report
            .git_ref
            .strip_prefix("refs/heads/")
            .or_else(|| report.git_ref.strip_prefix("refs/tags/"))
            .unwrap_or(report.git_ref);
        if !branch.is_empty() {
            body["ref"] = branch.into();
        }
        if let Some(target) = report.target_url {
            body["target_url"] = target.into();
        }
        Ok(client
            .post(url)
            .header("private-token", secret_header(report.token.to_owned())?)
            .json(&body))
    }
}
