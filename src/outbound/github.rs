//! GitHub commit statuses: `POST {api}/repos/{owner}/{repo}/statuses/{sha}` with a token
//! (docs.github.com/en/rest/commits/statuses). States: pending, success, failure, error.

use super::{repository_status, secret_header, CommitStatusApi, StatusReport};
use crate::domain::report::ReportProvider;

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
        Ok(
            repository_status(client, report, self.provider().state(report.status))?
                .header("accept", "application/vnd.github+json")
                .header("x-github-api-version", "2022-11-28")
                .header(
                    "authorization",
                    secret_header(format!("Bearer {}", report.token))?,
                ),
        )
    }
}
