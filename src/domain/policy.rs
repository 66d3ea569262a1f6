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
}

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
}
