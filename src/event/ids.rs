//! Identifiers that travel in NATS subjects and headers.
//!
//! A session id is a subject token (`herd.session.<session_id>.<type>`), and an event id is the
//! `Nats-Msg-Id` that deduplicates appends. Both are parsed once at the edge ("parse, don't
//! validate"): a value of these types is always safe to put in a subject or header, so no code
//! further in ever formats an unchecked string into a subject.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest id herd accepts. Long enough for any UUID-based scheme with a prefix, short
/// enough to keep subjects (and the server's per-subject index) small.
pub const MAX_ID_LEN: usize = 128;

/// Why a string was refused as an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty ids cannot be subject tokens.
    #[error("{kind} is empty")]
    Empty {
        /// Which kind of id ("session id", "event id", …).
        kind: &'static str,
    },
    /// Too long for a subject token.
    #[error("{kind} is {len} characters long; at most {MAX_ID_LEN} are allowed")]
    TooLong {
        /// Which kind of id.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A character that is not subject-safe (`.`, `*`, `>`, whitespace, non-ASCII, …).
    #[error(
        "{kind} {value:?} contains {found:?} at position {position}; only ASCII letters, digits, '-' and '_' are allowed"
    )]
    BadChar {
        /// Which kind of id.
        kind: &'static str,
        /// The refused value (ids are not secrets, so echoing it helps the caller).
        value: String,
        /// The first offending character.
        found: char,
        /// Its character position.
        position: usize,
    },
}

/// Checks that `value` is a subject-safe token: 1..=128 ASCII letters, digits, `-` or `_`.
pub fn check_token(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if let Some((position, found)) = value
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(IdError::BadChar {
            kind,
            value: value.chars().take(MAX_ID_LEN).collect(),
            found,
            position,
        });
    }
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            len: value.len(),
        });
    }
    Ok(())
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// The prefix of generated ids, after the Managed Agents API's id style.
            pub const PREFIX: &'static str = $prefix;

            /// Parses and validates an id that came from outside.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_token($kind, &value)?;
                Ok(Self(value))
            }

            /// A new unique id: the prefix and a UUIDv7, so ids sort by creation time.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, uuid::Uuid::now_v7().simple()))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

token_id!(
    /// Identifies a session; a single token of its subjects `herd.session.<id>.>`.
    SessionId,
    "session id",
    "sesn_"
);
token_id!(
    /// Identifies an event; it is the event's `Nats-Msg-Id`, so appending the same event twice
    /// within the stream's duplicate window stores it once.
    EventId,
    "event id",
    "sevt_"
);

impl EventId {
    /// A deterministic id derived from other ids, for events that more than one process may try
    /// to append (a tool result keyed by its tool_use id, say): every attempt carries the same
    /// id, so JetStream stores one. Parts are joined with `_`; a part that is not a valid token is
    /// rejected.
    /// True for an id of herd's own derived form (`sevt_<kind>_…`, like a tool result's):
    /// one that nothing from outside may use, since a planted copy could stand in for the
    /// event herd derives it for.
    pub fn is_derived(&self) -> bool {
        self.0
            .strip_prefix(Self::PREFIX)
            .is_some_and(|rest| rest.contains('_'))
    }

    /// An id derived from a kind and parts, the same for every writer.
    pub fn derived(kind: &str, parts: &[&str]) -> Result<Self, IdError> {
        let mut s = String::from(Self::PREFIX);
        s.push_str(kind);
        for p in parts {
            check_token("id part", p)?;
            s.push('_');
            s.push_str(p);
        }
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_generated_and_plain_ids() {
        let g = SessionId::generate();
        assert!(g.as_str().starts_with("sesn_"));
        assert_eq!(SessionId::parse(g.as_str()).unwrap(), g);
        assert!(SessionId::parse("order-42_A").is_ok());
        assert!(EventId::parse("toolu_01A09q90qw90lq917835lq9").is_ok());
    }

    #[test]
    fn refuses_subject_unsafe_ids() {
        for bad in ["a.b", "a*", ">", "a b", "tab\t", "é", "a/b", "a\nb"] {
            let err = SessionId::parse(bad).unwrap_err();
            assert!(matches!(err, IdError::BadChar { .. }), "{bad:?}: {err}");
            assert!(err.to_string().contains("only ASCII letters"), "{err}");
        }
        assert_eq!(
            SessionId::parse("").unwrap_err(),
            IdError::Empty { kind: "session id" }
        );
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert!(matches!(
            EventId::parse(long).unwrap_err(),
            IdError::TooLong { len: 129, .. }
        ));
        assert!(EventId::parse("x".repeat(MAX_ID_LEN)).is_ok());
    }

    #[test]
    fn derived_ids_are_deterministic_and_checked() {
        let a = EventId::derived("result", &["toolu_1"]).unwrap();
        assert_eq!(a, EventId::derived("result", &["toolu_1"]).unwrap());
        assert_eq!(a.as_str(), "sevt_result_toolu_1");
        assert!(EventId::derived("result", &["bad.id"]).is_err());
    }

    #[test]
    fn serde_validates() {
        let ok: SessionId = serde_json::from_str("\"s1\"").unwrap();
        assert_eq!(ok.as_str(), "s1");
        let err = serde_json::from_str::<SessionId>("\"s.1\"").unwrap_err();
        assert!(err.to_string().contains("session id"), "{err}");
    }
}
