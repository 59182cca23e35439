//! Who may call the API: keys, their scopes, and the tasks they are limited to.
//!
//! A key is 256 random bits, shown once when it is created. The database keeps only its
//! SHA-256, so that every replica can check a key and a copy of the database gives
//! none away. Auth is on as soon as the database holds a key (a revoked one too) or the
//! server is told to require it.

pub mod cli;
mod keyring;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use keyring::{Caller, Keyring};

use crate::store::{KeyRow, StoreError};

/// What starts every key that Exemplar makes, so that a leaked one is easy to spot.
const KEY_PREFIX: &str = "exm_";
/// The shortest bootstrap key accepted: 128 bits written as hex.
pub const MIN_BOOTSTRAP_KEY_LEN: usize = 32;
/// The longest key name accepted, in bytes.
pub const MAX_KEY_NAME_BYTES: usize = 128;
/// The most tasks one key may be limited to.
pub const MAX_KEY_TASKS: usize = 64;

/// What a key may do; each scope includes those before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read tasks and examples; retrieve, predict, evaluate; use the models.
    Read,
    /// Also write examples, pool items and selections.
    Write,
    /// Also create, change and delete tasks, and manage keys.
    Admin,
}

impl Scope {
    /// The scope's name, as stored and as written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: liveness, readiness, metrics.
    Public,
    /// A key with this scope that covers the task named in the path.
    Task(Scope),
    /// A key with this scope; a key limited to some tasks may use it only below admin,
    /// so that it cannot manage keys or reach other tasks.
    Service(Scope),
}

/// Why a caller was turned away.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header while auth is on.
    #[error("this server requires an API key: send `Authorization: Bearer KEY`")]
    Missing,
    /// The key is unknown or revoked.
    #[error("the API key is not valid (unknown or revoked)")]
    Invalid,
    /// The key's scope is below what the route needs.
    #[error("this needs a key with the `{needed}` scope; this key has `{held}`")]
    Scope {
        /// What the route needs.
        needed: &'static str,
        /// What the key holds.
        held: &'static str,
    },
    /// The key is limited to other tasks.
    #[error("this key is not allowed to use task `{0}`")]
    Task(String),
    /// The key is limited to some tasks, and the route is for keys of every task.
    #[error("this needs a key that is not limited to some tasks")]
    TaskLimited,
    /// A key to create is not well-formed.
    #[error("{0}")]
    InvalidKey(String),
    /// The keys could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A key as the service knows it: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// The public id, derived from the key's hash; `/v1/keys/{id}` revokes it.
    pub id: String,
    /// What the key is for.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// The tasks it is limited to; `None` for every task.
    pub tasks: Option<Vec<String>>,
    /// Seconds since the epoch when it was created.
    pub created_at: i64,
    /// Seconds since the epoch when it was revoked, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
}

impl KeyInfo {
    /// Whether this key may do what `access` asks, for `task` when the route names one.
    ///
    /// # Errors
    /// [`AuthError::Scope`], [`AuthError::Task`] or [`AuthError::TaskLimited`] naming
    /// what is missing.
    pub fn permits(&self, access: Access, task: Option<&str>) -> Result<(), AuthError> {
        let needed = match access {
            Access::Public => return Ok(()),
            Access::Task(scope) | Access::Service(scope) => scope,
        };
        if self.scope < needed {
            return Err(AuthError::Scope {
                needed: needed.as_str(),
                held: self.scope.as_str(),
            });
        }
        let Some(allowed) = &self.tasks else {
            return Ok(());
        };
        match (access, task) {
            (Access::Task(_), Some(task)) if allowed.iter().any(|t| t == task) => Ok(()),
            (Access::Task(_), Some(task)) => Err(AuthError::Task(task.to_owned())),
            (Access::Service(scope), _) if scope < Scope::Admin => Ok(()),
            _ => Err(AuthError::TaskLimited),
        }
    }

    /// Whether this key may see `task` in a listing.
    pub fn sees(&self, task: &str) -> bool {
        self.tasks
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|t| t == task))
    }

    fn from_row(row: &KeyRow) -> Result<Self, StoreError> {
        let scope = Scope::parse(&row.scope)
            .ok_or_else(|| StoreError::Corrupt(format!("key {}: scope `{}`", row.id, row.scope)))?;
        let tasks = row
            .tasks
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("key {}: tasks: {e}", row.id)))?;
        Ok(Self {
            id: row.id.clone(),
            name: row.name.clone(),
            scope,
            tasks,
            created_at: row.created_at,
            revoked_at: row.revoked_at,
        })
    }
}

/// A key just made: the secret, shown once, and what is stored of it.
pub struct NewKey {
    /// The key to give to its user; it is not kept anywhere.
    pub secret: String,
    /// What the service knows of it.
    pub info: KeyInfo,
}

/// What a new key may do, as its creator asked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// What the key is for.
    #[serde(default)]
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// The tasks it is limited to; absent for every task.
    #[serde(default)]
    pub tasks: Option<Vec<String>>,
}

impl KeyRequest {
    fn check(&self) -> Result<(), AuthError> {
        if self.name.len() > MAX_KEY_NAME_BYTES {
            return Err(AuthError::InvalidKey(format!(
                "`name` is longer than {MAX_KEY_NAME_BYTES} bytes"
            )));
        }
        if let Some(tasks) = &self.tasks {
            if tasks.is_empty() || tasks.len() > MAX_KEY_TASKS {
                return Err(AuthError::InvalidKey(format!(
                    "`tasks` must name 1 to {MAX_KEY_TASKS} tasks, or be left out for every task"
                )));
            }
        }
        Ok(())
    }
}

/// The SHA-256 of `secret`, as hex: what the database holds.
pub fn hash_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The public id of the key whose hash is `hash`: short, and no help in guessing it.
fn key_id(hash: &str) -> String {
    format!("key_{}", &hash[..16])
}

/// A fresh key of 256 bits from the operating system's generator.
fn fresh_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

/// The stored form of `secret` with what `request` allows.
fn key_row(secret: &str, request: &KeyRequest) -> Result<KeyRow, AuthError> {
    request.check()?;
    let hash = hash_key(secret);
    Ok(KeyRow {
        id: key_id(&hash),
        hash,
        name: request.name.clone(),
        scope: request.scope.as_str().to_owned(),
        tasks: request
            .tasks
            .as_ref()
            .map(|t| serde_json::to_string(t).unwrap_or_default()),
        created_at: crate::store::now(),
        revoked_at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scope: Scope, tasks: Option<&[&str]>) -> KeyInfo {
        KeyInfo {
            id: "key_0".into(),
            name: String::new(),
            scope,
            tasks: tasks.map(|t| t.iter().map(|s| s.to_string()).collect()),
            created_at: 0,
            revoked_at: None,
        }
    }

    #[test]
    fn scopes_include_the_ones_below() {
        let write = key(Scope::Write, None);
        assert!(write.permits(Access::Task(Scope::Read), Some("a")).is_ok());
        assert!(write.permits(Access::Task(Scope::Write), Some("a")).is_ok());
        assert!(matches!(
            write.permits(Access::Task(Scope::Admin), Some("a")),
            Err(AuthError::Scope {
                needed: "admin",
                held: "write"
            })
        ));
        assert!(key(Scope::Admin, None)
            .permits(Access::Service(Scope::Admin), None)
            .is_ok());
    }

    #[test]
    fn task_limited_keys_reach_their_tasks_only() {
        let limited = key(Scope::Admin, Some(&["films"]));
        assert!(limited
            .permits(Access::Task(Scope::Admin), Some("films"))
            .is_ok());
        assert!(matches!(
            limited.permits(Access::Task(Scope::Read), Some("news")),
            Err(AuthError::Task(t)) if t == "news"
        ));
        assert!(limited.permits(Access::Service(Scope::Read), None).is_ok());
        // Managing keys would let it mint a key for every task.
        assert!(matches!(
            limited.permits(Access::Service(Scope::Admin), None),
            Err(AuthError::TaskLimited)
        ));
        assert!(limited.sees("films") && !limited.sees("news"));
    }

    #[test]
    fn stored_keys_are_hashes_with_ids_derived_from_them() {
        let secret = fresh_secret();
        assert_eq!(secret.len(), KEY_PREFIX.len() + 64);
        assert_ne!(secret, fresh_secret());
        let request = KeyRequest {
            name: "ci".into(),
            scope: Scope::Write,
            tasks: Some(vec!["films".into()]),
        };
        let row = key_row(&secret, &request).unwrap();
        assert_eq!(row.hash, hash_key(&secret));
        assert!(!row.hash.contains(&secret[KEY_PREFIX.len()..]));
        assert_eq!(row.id, format!("key_{}", &row.hash[..16]));
        let info = KeyInfo::from_row(&row).unwrap();
        assert_eq!(info.scope, Scope::Write);
        assert_eq!(info.tasks, Some(vec!["films".to_owned()]));
    }

    #[test]
    fn sha256_is_the_standard_one() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
