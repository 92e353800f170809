//! What counts as a valid id, app name and region code.
//!
//! Ids and app names become DNS names (`<app>.internal`), so both must be made of DNS-safe
//! labels: letters, digits and `-`, 1 to 63 characters each, not starting or ending with `-`,
//! separated by single dots, 253 characters at most in all. Comparison is case-insensitive;
//! the registry stores app names lower-cased.

/// Whether `label` is one DNS-safe label.
pub fn is_label(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// Whether `name` is one or more DNS-safe labels separated by dots.
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_label)
}

/// Whether `code` is a region code: 2 to 16 letters, digits or `-` (`sa`, `eu-west`, `gru`).
pub fn is_region_code(code: &str) -> bool {
    (2..=16).contains(&code.len()) && is_label(code)
}

/// Whether `code` is an ISO 3166-1 alpha-2 country code shape (two ASCII letters).
pub fn is_country_code(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|c| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns_name("gru.pop"));
        assert!(is_dns_name("pop-gru"));
        assert!(is_dns_name("A1"));
        assert!(!is_dns_name(""));
        assert!(!is_dns_name("gru..pop"));
        assert!(!is_dns_name(".gru"));
        assert!(!is_dns_name("gru."));
        assert!(!is_dns_name("-gru"));
        assert!(!is_dns_name("gru_pop"));
        assert!(!is_dns_name("gru pop"));
        assert!(!is_dns_name(&"a".repeat(64)));
        assert!(is_dns_name(&"a".repeat(63)));
        assert!(!is_dns_name(&["a"; 200].join(".")));
        assert!(is_region_code("sa"));
        assert!(is_region_code("eu-west"));
        assert!(!is_region_code("s"));
        assert!(!is_region_code("s.a"));
        assert!(is_country_code("BR"));
        assert!(!is_country_code("BRA"));
    }
}
