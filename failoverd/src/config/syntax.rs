//! Syntax of names and hostnames: what the config accepts before anything is resolved.

/// Longest service or backend name.
pub const MAX_NAME_LEN: usize = 64;

/// Checks a service or backend name: `[A-Za-z0-9._:@-]+`, at most 64 characters.
///
/// Names become metric label values and command-line arguments, so they are
/// kept to characters that need no quoting in either.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name must not be empty".to_owned());
    }
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return Err(format!(
            "name `{name}` is {len} characters long; at most {MAX_NAME_LEN} are allowed"
        ));
    }
    if let Some(c) = name.chars().find(|&c| !is_name_char(c)) {
        return Err(format!(
            "name `{name}` contains `{}`; only letters, digits and . _ : @ - are allowed",
            c.escape_debug()
        ));
    }
    Ok(())
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-')
}

/// Checks hostname syntax (RFC 1123): dot-separated labels of letters, digits
/// and inner hyphens, each at most 63 characters, 253 in all, one optional
/// trailing dot. Returns why not.
pub fn check_hostname(host: &str) -> Result<(), &'static str> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 253 {
        return Err("it is longer than 253 characters");
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err("it has an empty label");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 characters");
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err("only letters, digits, hyphens and dots are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with a hyphen");
        }
        last = label;
    }
    // `10.0.0:80` would otherwise pass as a hostname and fail only at lookup time.
    if last.chars().all(|c| c.is_ascii_digit()) {
        return Err("its last label is all digits (a mistyped IP address?)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_the_allowed_characters_pass() {
        for name in ["orders-db", "a", "db_1.eu:primary@x", &"x".repeat(64)] {
            assert_eq!(check_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn empty_long_and_odd_names_fail() {
        assert_eq!(check_name(""), Err("name must not be empty".to_owned()));
        assert!(check_name(&"x".repeat(65)).unwrap_err().contains("65"));
        assert!(check_name("orders db").unwrap_err().contains("` `"));
        assert!(check_name("ordérs").unwrap_err().contains("`é`"));
        assert!(check_name("a/b").is_err());
    }

    #[test]
    fn hostnames_follow_rfc_1123() {
        for host in ["db-b.internal", "localhost", "db.internal.", "3com.example"] {
            assert_eq!(check_hostname(host), Ok(()), "{host}");
        }
        for host in [
            "",
            ".",
            "a..b",
            "-db.internal",
            "db-.internal",
            "db_b.internal",
            "db b",
            "10.0.0",
        ] {
            assert!(check_hostname(host).is_err(), "{host}");
        }
        assert!(check_hostname(&format!("{}.example", "a".repeat(64))).is_err());
        assert!(check_hostname(&"a.".repeat(128)).is_err());
    }
}
