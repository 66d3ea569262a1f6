//! Which objects a list, watch or deletecollection request selects: its namespace, label
//! selector and field selector.
//!
//! Depends on: `selectors`, `store` (the [`Kind`] trait) and the query type in `api`.

use super::Query;
use crate::error::Status;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::Kind;

pub struct Filter {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub namespace: Option<String>,
}

impl Filter {
    pub fn parse<K: Kind>(q: &Query, namespace: Option<String>) -> Result<Filter, Status> {
        let labels =
            LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
        let probe = K::default();
        let fields = FieldSelector::parse(
            q.get("fieldSelector").map(String::as_str).unwrap_or(""),
            |k| probe.field(k).is_some(),
        )?;
        Ok(Filter {
            labels,
            fields,
            namespace,
        })
    }

    pub fn matches<K: Kind>(&self, obj: &K) -> bool {
        let m = obj.metadata();
        if let Some(ns) = &self.namespace {
            if m.namespace.as_deref() != Some(ns.as_str()) {
                return false;
            }
        }
        self.labels.matches(m.labels.as_ref()) && self.fields.matches(|k| obj.field(k))
    }
}
