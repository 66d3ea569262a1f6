//! Gitea and Forgejo commit status: `POST {api}/repos/{owner}/{repo}/statuses/{sha}` with
//! `Authorization: token ...` (the Gitea API's CreateStatusOption). States: pending, success,
//! error, failure (and warning, unused).

use super::{repository_status, secret_header, CommitStatusApi, StatusReport};
use crate::domain::report::ReportProvider;

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
        Ok(
            repository_status(client, report, self.provider().state(report.status))?.header(
                "authorization",
                secret_header(format!("token {}", report.token))?,
            ),
        )
    }
}
