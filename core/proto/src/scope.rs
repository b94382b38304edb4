//! Scopes (`team:<id>`, `village:<id>`) parsed once into a typed [`Scope`].
//!
//! A scope is the unit of access and of the change feed, and every record lives in exactly one.
//! Text from outside (command lines, dashboard forms, stored users) is parsed here once, so the
//! code that holds a scope knows its level and id without splitting strings again. Scopes that
//! arrive from devices in sync messages stay text on the wire and are checked per document
//! ([`crate::model::check_scope`]), so a bad one is a refusal with a reason, not a decode error.
//!
//! Decisions:
//! - The text form is `<level>:<id>`: the level is one of [`ScopeLevel::ALL`], the id is any
//!   text of 1 to [`Scope::MAX_ID_LEN`] bytes (it may itself hold `:`), exactly what phones
//!   have always been able to write.
//! - Levels are an enum so that the region tree (county → township → village, bureau →
//!   department → team) can add its upper levels as variants later; records live only at the
//!   level their kind names ([`crate::Kind::scope_level`]).
//! - Serialised as the same string (JSON and postcard alike), so stored users, enrollments and
//!   wire messages keep their bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The level of a scope in the region tree: which kind of node a scope id names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeLevel {
    /// A volunteer team (`team:<id>`), where check-ins live.
    Team,
    /// A village (`village:<id>`), where village visits and the survey live.
    Village,
}

impl ScopeLevel {
    /// Every level, in the order messages list them.
    pub const ALL: [ScopeLevel; 2] = [ScopeLevel::Team, ScopeLevel::Village];

    /// The level's name, the part of a scope before the `:`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeLevel::Team => "team",
            ScopeLevel::Village => "village",
        }
    }

    /// The names of every level, comma separated, for messages.
    fn known() -> String {
        ScopeLevel::ALL.map(ScopeLevel::as_str).join(", ")
    }
}

impl fmt::Display for ScopeLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a text is not a scope.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// There is no `:` between level and id.
    #[error("`{0}` is not a scope: expected `<level>:<id>`, e.g. `team:7` or `village:12`")]
    NoLevel(String),
    /// The part before the `:` is not a known level.
    #[error("scope `{scope}` has an unknown level `{level}` (known: {known})", known = ScopeLevel::known())]
    UnknownLevel {
        /// The text given.
        scope: String,
        /// The level it names.
        level: String,
    },
    /// Nothing follows the `:`.
    #[error("scope `{0}` has no id: expected `<level>:<id>`, e.g. `team:7`")]
    EmptyId(String),
    /// The id is longer than [`Scope::MAX_ID_LEN`] bytes.
    #[error("scope `{0}` has an id longer than {max} bytes", max = Scope::MAX_ID_LEN)]
    LongId(String),
}

/// A scope: a level and an id, held together with its text `<level>:<id>`.
///
/// Ordered and compared by its text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scope {
    // `text` first, so the derived order is the order of the text.
    text: String,
    level: ScopeLevel,
}

impl Scope {
    /// The longest id a scope may have, in bytes.
    pub const MAX_ID_LEN: usize = 128;

    /// The scope `id` at `level`.
    pub fn new(level: ScopeLevel, id: &str) -> Result<Scope, ScopeError> {
        format!("{level}:{id}").parse()
    }

    /// The scope's level.
    pub fn level(&self) -> ScopeLevel {
        self.level
    }

    /// The scope's id, the part after the first `:`.
    pub fn id(&self) -> &str {
        &self.text[self.level.as_str().len() + 1..]
    }

    /// The scope's text, `<level>:<id>`.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// `scopes` as text, separated by `sep`, for messages and tables.
pub fn join(scopes: &[Scope], sep: &str) -> String {
    scopes
        .iter()
        .map(Scope::as_str)
        .collect::<Vec<_>>()
        .join(sep)
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (level, id) = s
            .split_once(':')
            .ok_or_else(|| ScopeError::NoLevel(s.to_string()))?;
        let level = ScopeLevel::ALL
            .into_iter()
            .find(|l| l.as_str() == level)
            .ok_or_else(|| ScopeError::UnknownLevel {
                scope: s.to_string(),
                level: level.to_string(),
            })?;
        if id.is_empty() {
            return Err(ScopeError::EmptyId(s.to_string()));
        }
        if id.len() > Scope::MAX_ID_LEN {
            return Err(ScopeError::LongId(s.to_string()));
        }
        Ok(Scope {
            text: s.to_string(),
            level,
        })
    }
}

impl TryFrom<String> for Scope {
    type Error = ScopeError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Scope> for String {
    fn from(scope: Scope) -> String {
        scope.text
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl AsRef<str> for Scope {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

/// A scope equals the text it was parsed from: scopes held as [`Scope`] meet scopes that came
/// from devices as text (a pushed document's scope, a cursor's).
impl PartialEq<str> for Scope {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for Scope {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl PartialEq<String> for Scope {
    fn eq(&self, other: &String) -> bool {
        self.text == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_into_level_and_id_and_display_as_given() {
        let team: Scope = "team:7".parse().unwrap();
        assert_eq!(team.level(), ScopeLevel::Team);
        assert_eq!(team.id(), "7");
        assert_eq!(team.to_string(), "team:7");
        let village: Scope = "village:a:b".parse().unwrap();
        assert_eq!(village.level(), ScopeLevel::Village);
        assert_eq!(village.id(), "a:b");
        assert_eq!(Scope::new(ScopeLevel::Village, "a:b"), Ok(village.clone()));
        assert_eq!(team, "team:7");
        assert_eq!(join(&[team, village], " "), "team:7 village:a:b");
    }

    #[test]
    fn bad_scopes_are_refused_with_the_reason() {
        let err = |s: &str| s.parse::<Scope>().unwrap_err();
        assert_eq!(err("team7"), ScopeError::NoLevel("team7".into()));
        assert!(matches!(err("county:1"), ScopeError::UnknownLevel { .. }));
        assert!(err("county:1").to_string().contains("known: team, village"));
        assert_eq!(err("team:"), ScopeError::EmptyId("team:".into()));
        let long = format!("team:{}", "x".repeat(Scope::MAX_ID_LEN + 1));
        assert_eq!(err(&long), ScopeError::LongId(long.clone()));
        let longest = format!("team:{}", "x".repeat(Scope::MAX_ID_LEN));
        assert!(longest.parse::<Scope>().is_ok());
    }

    /// Scopes held as `Scope` are stored (users, enrollments) and sent (the enrollment reply)
    /// where strings were before: both encodings must be byte for byte the same.
    #[test]
    fn scopes_encode_exactly_like_strings_in_json_and_postcard() {
        let text = vec!["team:1".to_string(), "village:大坪".to_string()];
        let typed: Vec<Scope> = text.iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(
            serde_json::to_vec(&typed).unwrap(),
            serde_json::to_vec(&text).unwrap()
        );
        assert_eq!(
            postcard::to_stdvec(&typed).unwrap(),
            postcard::to_stdvec(&text).unwrap()
        );
        let back: Vec<Scope> = serde_json::from_slice(&serde_json::to_vec(&text).unwrap()).unwrap();
        assert_eq!(back, typed);
        let back: Vec<Scope> = postcard::from_bytes(&postcard::to_stdvec(&text).unwrap()).unwrap();
        assert_eq!(back, typed);
        assert!(serde_json::from_str::<Scope>("\"team:\"").is_err());
    }
}
