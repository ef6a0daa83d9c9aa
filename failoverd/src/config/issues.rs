//! Problems found after deserializing, each tied to the key path it is about.

use super::locate::{Locator, Position, Target};

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Issue {
    /// Dotted key path, like `services[0].health.timeout`.
    pub path: String,
    /// Whether to point at the key or at its value.
    pub target: Target,
    /// What is wrong.
    pub message: String,
}

/// Every problem found, in the order the checks ran.
#[derive(Debug, Default)]
pub(super) struct Issues(Vec<Issue>);

impl Issues {
    /// A value that breaks a rule.
    pub fn value(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(path.into(), Target::Value, message.into());
    }

    /// A key that should not be there.
    pub fn key(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(path.into(), Target::Key, message.into());
    }

    fn push(&mut self, path: String, target: Target, message: String) {
        self.0.push(Issue {
            path,
            target,
            message,
        });
    }

    /// Every problem, in the order found.
    pub fn into_vec(self) -> Vec<Issue> {
        self.0
    }

    /// Whether every rule held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problem written earliest in the file (ties: the one found first),
    /// so that the report does not depend on the order the checks run in.
    pub fn first(self, locator: &Locator) -> Option<(Issue, Position)> {
        self.0
            .into_iter()
            .map(|issue| {
                let pos = locator.find(&issue.path, issue.target);
                (issue, pos)
            })
            // min_by_key keeps the first of equal keys.
            .min_by_key(|(_, pos)| *pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_in_the_file_wins_over_the_first_found() {
        let locator = Locator::new("a: 1\nb: 2\n");
        let mut issues = Issues::default();
        issues.value("b", "second line");
        issues.value("a", "first line");
        issues.key("a", "first line, key");
        let (issue, pos) = issues.first(&locator).unwrap();
        assert_eq!(issue.message, "first line, key");
        assert_eq!(pos, Position { line: 1, column: 1 });
    }

    #[test]
    fn ties_go_to_the_first_found() {
        let locator = Locator::new("a: 1\n");
        let mut issues = Issues::default();
        issues.value("a", "one");
        issues.value("a", "two");
        assert_eq!(issues.first(&locator).unwrap().0.message, "one");
    }
}
