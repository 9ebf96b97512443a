//! Tag filters (`*`, `a || b`), applied at the broker by PULL and POP.

use crate::message;

/// A tag subscription: `*` (or empty) matches everything, else `a || b || …`.
#[derive(Debug, Clone)]
pub struct TagFilter(Option<Vec<String>>);

impl TagFilter {
    /// Parses a subscription expression.
    pub fn parse(expr: &str) -> TagFilter {
        let e = expr.trim();
        if e.is_empty() || e == "*" {
            return TagFilter(None);
        }
        TagFilter(Some(
            e.split("||")
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
        ))
    }

    /// Cheap pre-check on a consume-queue tag hash.
    pub fn may_match(&self, tag_hash: i64) -> bool {
        match &self.0 {
            None => true,
            Some(tags) => tags.iter().any(|t| message::tag_hash(Some(t)) == tag_hash),
        }
    }

    /// Exact check on the record's tag.
    pub fn matches(&self, tag: Option<&str>) -> bool {
        match &self.0 {
            None => true,
            Some(tags) => tag.is_some_and(|t| tags.iter().any(|x| x == t)),
        }
    }

    /// Whether only some tags pass (the record must then be checked with [`TagFilter::matches`]).
    pub fn is_selective(&self) -> bool {
        self.0.is_some()
    }
}
