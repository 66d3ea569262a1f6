//! Kubernetes naming rules (DNS-1123 labels and subdomains, qualified names, label values),
//! checked here exactly as the API server checks them so a bad name is refused at submission.

/// A DNS-1123 label: at most 63 lower-case alphanumerics or '-', starting and ending alphanumeric.
pub fn dns1123_label(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > 63 {
        return Err(format!(
            "must be no more than 63 characters (is {})",
            value.len()
        ));
    }
    if !is_dns_label(value) {
        return Err(format!(
            "{value:?} is not a valid DNS-1123 label: it must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated DNS-1123 labels.
pub fn dns1123_subdomain(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > 253 {
        return Err(format!(
            "must be no more than 253 characters (is {})",
            value.len()
        ));
    }
    if !value.split('.').all(is_dns_label) {
        return Err(format!(
            "{value:?} is not a valid DNS-1123 subdomain: it must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

fn is_dns_label(part: &str) -> bool {
    let bytes = part.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// The name part of a qualified name or a label value: alphanumerics, '-', '_', '.', starting and
/// ending alphanumeric, at most 63 characters.
fn is_label_name(part: &str) -> bool {
    let bytes = part.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// A qualified name, as used for label and annotation keys: `[prefix/]name`, the prefix a
/// DNS-1123 subdomain.
pub fn qualified_name(value: &str) -> Result<(), String> {
    let (prefix, name) = match value.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, value),
    };
    if let Some(prefix) = prefix {
        if dns1123_subdomain(prefix).is_err() {
            return Err(format!(
                "{value:?}: the prefix {prefix:?} must be a DNS-1123 subdomain"
            ));
        }
    }
    if !is_label_name(name) {
        return Err(format!(
            "{value:?} is not a valid qualified name: the name part must be 63 characters or less, consist of alphanumeric characters, '-', '_' or '.', and start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// The name of a Kueue object carried in a Job label (a LocalQueue, a WorkloadPriorityClass):
/// Kueue's job webhook checks the label as a DNS-1123 subdomain (`ValidateLabelAsCRDName` in
/// kubernetes-sigs/kueue pkg/controller/jobframework/validation.go), and as a label value it can
/// be at most 63 characters.
pub fn kueue_name(value: &str) -> Result<(), String> {
    dns1123_subdomain(value)?;
    if value.len() > 63 {
        return Err(format!(
            "must be no more than 63 characters, as it becomes a label value (is {})",
            value.len()
        ));
    }
    Ok(())
}

/// A label value: empty, or a valid name part.
pub fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid label value: it must be 63 characters or less, and consist of alphanumeric characters, '-', '_' or '.', starting and ending with an alphanumeric character"
        ))
    }
}

/// An environment variable name as the API server accepts it (a C identifier, plus '-' and '.').
pub fn env_var_name(value: &str) -> Result<(), String> {
    let bytes = value.as_bytes();
    let ok = !bytes.is_empty()
        && !bytes[0].is_ascii_digit()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid environment variable name: it must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_follow_rfc_1123() {
        assert!(dns1123_label("calculatepi").is_ok());
        assert!(dns1123_label("a-1").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(dns1123_label(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn subdomains_allow_dots_but_not_empty_parts() {
        assert!(dns1123_subdomain("example.com").is_ok());
        assert!(dns1123_subdomain("a..b").is_err());
        assert!(dns1123_subdomain(".a").is_err());
        assert!(dns1123_subdomain(&"a".repeat(254)).is_err());
    }

    #[test]
    fn qualified_names_take_an_optional_dns_prefix() {
        assert!(qualified_name("app").is_ok());
        assert!(qualified_name("example.com/app_1.x").is_ok());
        assert!(qualified_name("Example.com/app").is_err());
        assert!(qualified_name("example.com/").is_err());
        assert!(qualified_name("a/b/c").is_err());
        assert!(qualified_name("-app").is_err());
    }

    #[test]
    fn label_values_may_be_empty() {
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_3").is_ok());
        assert!(label_value("has space").is_err());
        assert!(label_value(&"x".repeat(64)).is_err());
    }

    #[test]
    fn env_names_must_not_start_with_a_digit() {
        assert!(env_var_name("PATH").is_ok());
        assert!(env_var_name("my.var-1").is_ok());
        assert!(env_var_name("1X").is_err());
        assert!(env_var_name("A=B").is_err());
        assert!(env_var_name("").is_err());
    }
}
