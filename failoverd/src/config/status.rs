//! `expect_status`: which HTTP status codes count as a healthy answer.

use std::fmt;

/// The HTTP status codes an http health check accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusMatch {
    /// Every code from the first to the second, both included. Default: 200-399.
    Range(u16, u16),
    /// Exactly these codes.
    List(Vec<u16>),
}

impl Default for StatusMatch {
    fn default() -> Self {
        StatusMatch::Range(200, 399)
    }
}

impl StatusMatch {
    /// Whether an answer with status `code` is healthy.
    pub fn matches(&self, code: u16) -> bool {
        match self {
            StatusMatch::Range(lo, hi) => (*lo..=*hi).contains(&code),
            StatusMatch::List(codes) => codes.contains(&code),
        }
    }
}

/// Writes the form the config file takes: `200-399` or `200,204`.
impl fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusMatch::Range(lo, hi) => write!(f, "{lo}-{hi}"),
            StatusMatch::List(codes) => {
                for (i, code) in codes.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{code}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_accepts_2xx_and_3xx_only() {
        let m = StatusMatch::default();
        assert!(m.matches(200));
        assert!(m.matches(302));
        assert!(m.matches(399));
        assert!(!m.matches(199));
        assert!(!m.matches(400));
        assert!(!m.matches(503));
    }

    #[test]
    fn list_accepts_exactly_its_codes() {
        let m = StatusMatch::List(vec![200, 204]);
        assert!(m.matches(200));
        assert!(m.matches(204));
        assert!(!m.matches(201));
    }

    #[test]
    fn displays_as_written_in_the_file() {
        assert_eq!(StatusMatch::default().to_string(), "200-399");
        assert_eq!(StatusMatch::List(vec![200, 204]).to_string(), "200,204");
    }
}
