//! What a run template may ask of the cluster in this installation: the namespaces and service
//! accounts it may use, from the configuration. Checked at submission, so a run that could never
//! be launched is refused with a clear error instead of failing later.

use super::validation::{Errors, Invalid};
use super::RunTemplate;

#[derive(Debug, Clone)]
pub struct RunPolicy {
    /// Namespaces runs may use; the first is where runs go when they name none.
    pub namespaces: Vec<String>,
    /// Service accounts runs may use (`default` is what a run without one gets).
    pub service_accounts: Vec<String>,
    /// Prepended to every Job name (`JOB_NAME_PREFIX`).
    pub job_name_prefix: String,
}

/// Kubernetes names that become hostnames are DNS labels of at most 63 characters.
const MAX_HOSTNAME: usize = 63;
/// The widest run number (an i64) with its dash, so the check holds for every future run.
const MAX_RUN_SUFFIX: usize = 1 + 19;

impl RunPolicy {
    pub fn check(&self, template: &RunTemplate, at: &str) -> Result<(), Invalid> {
        let mut errors = Errors::new();
        if let Some(namespace) = &template.namespace {
            if !self.namespaces.iter().any(|n| n == namespace) {
                errors.add(
                    format!("{at}.namespace"),
                    format!(
                        "{namespace:?} is not a namespace runs may use here; allowed: {}",
                        self.namespaces.join(", ")
                    ),
                );
            }
        }
        let account = template
            .service_account_name
            .as_deref()
            .unwrap_or("default");
        if !self.service_accounts.iter().any(|a| a == account) {
            errors.add(
                format!("{at}.serviceAccountName"),
                format!(
                    "{account:?} is not a service account runs may use here; allowed: {}",
                    self.service_accounts.join(", ")
                ),
            );
        }
        // The Job name shortens the task part to fit, down to one character; an Indexed Job's
        // pods then add `-<index>` for their hostname, which must still fit.
        let shortest =
            self.job_name_prefix.len() + 1 + MAX_RUN_SUFFIX + template.index_suffix_len();
        if template.index_suffix_len() > 0 && shortest > MAX_HOSTNAME {
            errors.add(
                format!("{at}.completions"),
                format!(
                    "an Indexed Job's name plus \"-<completions-1>\" must be a DNS label of at most {MAX_HOSTNAME} characters; with the Job name prefix {:?} there is no room for this many completions",
                    self.job_name_prefix
                ),
            );
        }
        errors.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RunPolicy {
        RunPolicy {
            namespaces: vec!["batch".into(), "render".into()],
            service_accounts: vec!["default".into(), "runner".into()],
            job_name_prefix: String::new(),
        }
    }

    #[test]
    fn namespaces_and_accounts_outside_the_allowlist_are_refused() {
        let mut template = RunTemplate::new("x", vec![]);
        assert!(policy().check(&template, "template").is_ok());
        template.namespace = Some("kube-system".into());
        template.service_account_name = Some("cluster-admin".into());
        let fields: Vec<String> = policy()
            .check(&template, "template")
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            ["template.namespace", "template.serviceAccountName"]
        );
        template.namespace = Some("render".into());
        template.service_account_name = Some("runner".into());
        assert!(policy().check(&template, "template").is_ok());
    }

    #[test]
    fn indexed_jobs_whose_hostnames_cannot_fit_are_refused_on_completions() {
        let mut template: RunTemplate = serde_json::from_value(serde_json::json!({
            "image": "x", "completionMode": "Indexed", "completions": 100000
        }))
        .unwrap();
        assert!(policy().check(&template, "template").is_ok());
        let mut long_prefix = policy();
        long_prefix.job_name_prefix = "a-very-long-installation-prefix-1234-".into();
        let err = long_prefix.check(&template, "template").unwrap_err();
        assert_eq!(err.0[0].field, "template.completions");
        template.completions = Some(10);
        assert!(long_prefix.check(&template, "template").is_ok());
    }
}
