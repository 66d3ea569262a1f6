//! Kubernetes quantities (`100m`, `2Gi`, `1e3`) and extended resources.

/// Extended resources (like `nvidia.com/gpu`) are whole units that cannot be overcommitted.
pub(crate) fn is_extended(name: &str) -> bool {
    name.contains('/') && !name.starts_with("kubernetes.io/")
}

/// Parses a Kubernetes quantity (`100m`, `1.5`, `2Gi`, `1e3`) into its value.
pub fn parse_quantity(text: &str) -> Result<f64, String> {
    let invalid = || {
        format!(
            "{text:?} is not a quantity: expected a number with an optional suffix (m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei, or an exponent like e3)"
        )
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let sign_stripped = number.strip_prefix(['+', '-']).unwrap_or(number);
    if sign_stripped.is_empty()
        || sign_stripped.contains(['+', '-'])
        || sign_stripped.matches('.').count() > 1
        || sign_stripped == "."
    {
        return Err(invalid());
    }
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let multiplier = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let power: i32 = exp[1..].parse().map_err(|_| invalid())?;
            10f64.powi(power)
        }
        _ => return Err(invalid()),
    };
    Ok(value * multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_with_every_suffix() {
        assert_eq!(parse_quantity("500m"), Ok(0.5));
        assert_eq!(parse_quantity("2Ki"), Ok(2048.0));
        assert_eq!(parse_quantity("1e3"), Ok(1000.0));
        assert_eq!(parse_quantity("1.5G"), Ok(1.5e9));
        for bad in ["", "m", "1.2.3", "1x", "--1", "1 Gi"] {
            assert!(parse_quantity(bad).is_err(), "{bad:?} accepted");
        }
    }
}
