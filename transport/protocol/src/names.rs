//! Names a client may send — topics and consumer groups — and the system names derived from
//! them (retry and dead-letter topics). One rule for the proxy and the broker, chosen so that
//! every name that passes also yields valid derived names: a retry topic is a directory name
//! on the broker's disk (at most 255 bytes), so a group and topic pair whose retry topic would
//! be longer is refused when the group first consumes the topic, not later in the revive path.

use std::fmt;

/// Longest topic, group or derived system topic name (a file name on the broker's disk).
pub const MAX_NAME_LEN: usize = 255;

/// Prefix of a group's retry topics.
pub const RETRY_PREFIX: &str = "%RETRY%";
/// Prefix of a group's dead-letter topic.
pub const DLQ_PREFIX: &str = "%DLQ%";

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// Empty or longer than [`MAX_NAME_LEN`].
    Length {
        /// What was named ("topic", "consumer group").
        what: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A character outside `[A-Za-z0-9_%|-]`.
    Character {
        /// What was named.
        what: &'static str,
        /// The name (its first 64 characters).
        name: String,
        /// The offending character.
        found: char,
    },
    /// The pair's retry topic would be longer than [`MAX_NAME_LEN`].
    DerivedTooLong {
        /// The retry topic's length in bytes.
        len: usize,
    },
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Length { what, len } => {
                write!(
                    f,
                    "{what} name must be 1 to {MAX_NAME_LEN} characters, got {len}"
                )
            }
            NameError::Character { what, name, found } => write!(
                f,
                "{what} name `{name}` contains {found:?}; allowed are letters, digits, `_`, `-`, \
                 `%` and `|`"
            ),
            NameError::DerivedTooLong { len } => write!(
                f,
                "consumer group and topic names too long together: their retry topic would have \
                 {len} characters (at most {MAX_NAME_LEN})"
            ),
        }
    }
}

impl std::error::Error for NameError {}

fn check(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(NameError::Length {
            what,
            len: name.len(),
        });
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '%' | '|')))
    {
        Some(found) => Err(NameError::Character {
            what,
            name: name.chars().take(64).collect(),
            found,
        }),
        None => Ok(()),
    }
}

/// A topic name: 1–255 characters of `[A-Za-z0-9_%|-]`.
pub fn check_topic(name: &str) -> Result<(), NameError> {
    check("topic", name)
}

/// A consumer group name: 1–255 characters of `[A-Za-z0-9_%|-]` (RocketMQ's rule), so its
/// dead-letter topic (`%DLQ%` + group) is a valid system name up to 250 characters.
pub fn check_group(name: &str) -> Result<(), NameError> {
    check("consumer group", name)?;
    if DLQ_PREFIX.len() + name.len() > MAX_NAME_LEN {
        return Err(NameError::Length {
            what: "consumer group",
            len: name.len(),
        });
    }
    Ok(())
}

/// A group consuming a topic: both names valid, and the retry topic they give valid too.
/// `topic` may itself be a retry topic being read back (its name is then not derived again).
pub fn check_consumption(group: &str, topic: &str) -> Result<(), NameError> {
    check_group(group)?;
    if let Some(rest) = topic.strip_prefix(RETRY_PREFIX) {
        // `+` joins a retry topic's group and topic.
        return match rest.split_once('+') {
            Some((g, t)) if !g.is_empty() => check_topic(t).and(check_group(g)).and_then(|()| {
                let len = topic.len();
                if len > MAX_NAME_LEN {
                    Err(NameError::DerivedTooLong { len })
                } else {
                    Ok(())
                }
            }),
            _ => check_topic(topic),
        };
    }
    check_topic(topic)?;
    let len = retry_topic_len(group, topic);
    if len > MAX_NAME_LEN {
        return Err(NameError::DerivedTooLong { len });
    }
    Ok(())
}

fn retry_topic_len(group: &str, topic: &str) -> usize {
    RETRY_PREFIX.len() + group.len() + 1 + topic.len()
}

/// The retry topic of `group` for `topic`.
pub fn retry_topic(group: &str, topic: &str) -> String {
    format!("{RETRY_PREFIX}{group}+{topic}")
}

/// The dead-letter topic of `group`.
pub fn dlq_topic(group: &str) -> String {
    format!("{DLQ_PREFIX}{group}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_like_and_blank_names_are_refused() {
        for bad in ["../../x", "a/b", "a b", "", "tab\t", "é"] {
            assert!(check_group(bad).is_err(), "{bad:?}");
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check_group("../x"),
            Err(NameError::Character {
                what: "consumer group",
                name: "../x".into(),
                found: '.'
            })
        );
        assert!(check_group("GID_orders-1|%x").is_ok());
    }

    #[test]
    fn every_accepted_pair_yields_valid_derived_names() {
        let topic = "T".repeat(100);
        let longest = "g".repeat(MAX_NAME_LEN - RETRY_PREFIX.len() - 1 - topic.len());
        check_consumption(&longest, &topic).unwrap();
        assert_eq!(retry_topic(&longest, &topic).len(), MAX_NAME_LEN);
        let longer = format!("{longest}g");
        assert_eq!(
            check_consumption(&longer, &topic),
            Err(NameError::DerivedTooLong {
                len: MAX_NAME_LEN + 1
            })
        );
        // The longest group alone still has a valid dead-letter topic.
        let g = "g".repeat(MAX_NAME_LEN - DLQ_PREFIX.len());
        check_group(&g).unwrap();
        assert_eq!(dlq_topic(&g).len(), MAX_NAME_LEN);
        assert!(check_group(&format!("{g}g")).is_err());
        // Reading a retry topic back derives nothing further.
        check_consumption("g", &retry_topic("g", &topic)).unwrap();
    }
}
