//! A trigger's filters: which event kinds and refs start runs.

use super::{EventKind, GitEvent};
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

pub(super) fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

/// A trigger's filters, ready to match events.
pub struct Filter {
    events: Vec<EventKind>,
    patterns: Vec<String>,
    refs: GlobSet,
}

impl Filter {
    /// Builds the filter of a stored (so already validated) trigger.
    pub fn new(events: &[EventKind], patterns: &[String]) -> Result<Filter, String> {
        let mut set = GlobSetBuilder::new();
        for pattern in patterns {
            set.add(glob(pattern).map_err(|e| e.to_string())?);
        }
        Ok(Filter {
            events: events.to_vec(),
            patterns: patterns.to_vec(),
            refs: set.build().map_err(|e| e.to_string())?,
        })
    }

    /// `Err` says why the event starts no run.
    pub fn check(&self, event: &GitEvent) -> Result<(), String> {
        if !self.events.contains(&event.kind) {
            let events: Vec<&str> = self.events.iter().map(|e| e.as_str()).collect();
            return Err(format!(
                "{} events are not among this trigger's events ({})",
                event.kind,
                events.join(", ")
            ));
        }
        if self.patterns.is_empty() {
            return Ok(());
        }
        let matched = event.base_ref.as_deref().unwrap_or(&event.git_ref);
        let short = matched
            .strip_prefix("refs/heads/")
            .or_else(|| matched.strip_prefix("refs/tags/"))
            .unwrap_or(matched);
        if self.refs.is_match(matched) || self.refs.is_match(short) {
            Ok(())
        } else {
            Err(format!(
                "{matched} matches none of this trigger's ref filters ({})",
                self.patterns.join(", ")
            ))
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::webhook::payload::tests::push;
    use crate::domain::webhook::{parse, Parsed, Provider};

    #[test]
    fn filters_match_event_kinds_and_ref_globs() {
        let sha = "b".repeat(40);
        let event =
            |git_ref: &str| match parse(Provider::Github, "push", &push(git_ref, &sha)).unwrap() {
                Parsed::Event(e) => e,
                other => panic!("{other:?}"),
            };
        let filter = Filter::new(
            &[EventKind::Push],
            &[
                "main".into(),
                "release/*".into(),
                "refs/heads/hotfix/**".into(),
            ],
        )
        .unwrap();
        assert!(filter.check(&event("refs/heads/main")).is_ok());
        assert!(filter.check(&event("refs/heads/release/1.0")).is_ok());
        assert!(filter.check(&event("refs/heads/hotfix/x/y")).is_ok());
        assert!(
            filter.check(&event("refs/heads/release/1.0/rc")).is_err(),
            "* does not cross /"
        );
        assert!(filter
            .check(&event("refs/heads/dev"))
            .unwrap_err()
            .contains("matches none"));
        assert!(filter
            .check(&event("refs/tags/main"))
            .unwrap_err()
            .contains("tag_push"));
        assert!(Filter::new(&[EventKind::Push], &[])
            .unwrap()
            .check(&event("refs/heads/x"))
            .is_ok());
    }
}
