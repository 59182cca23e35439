//! The keys every request is checked against: a copy of the key table in memory,
//! reloaded in the background, so that checking a key costs a hash and a map lookup and
//! keeps working while the database is briefly away.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{fresh_secret, hash_key, key_row, AuthError, KeyInfo, KeyRequest, NewKey, Scope};
use crate::store::Store;

/// Who sent a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Nobody in particular: auth is off.
    Anonymous,
    /// The holder of this key.
    Key(KeyInfo),
}

impl Caller {
    /// Whether this caller may see `task` in a listing.
    pub fn sees(&self, task: &str) -> bool {
        match self {
            Self::Anonymous => true,
            Self::Key(key) => key.sees(task),
        }
    }
}

/// The live keys, by hash, and whether a key is needed at all.
#[derive(Default)]
struct Snapshot {
    live: HashMap<String, KeyInfo>,
    required: bool,
}

/// The key table as this replica last read it.
pub struct Keyring {
    store: Store,
    require_auth: bool,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Held from a reload's read to its swap, so that a read made before a change never
    /// replaces the snapshot that a read made after it installed.
    reloading: tokio::sync::Mutex<()>,
}

impl Keyring {
    /// Reads the keys, after adding `bootstrap` as an admin key if it is new.
    ///
    /// # Errors
    /// When the database fails. The bootstrap key's length is checked with the rest of
    /// the configuration ([`crate::config::Config::check`]), before the server listens.
    pub async fn open(
        store: Store,
        require_auth: bool,
        bootstrap: Option<&str>,
    ) -> Result<Self, AuthError> {
        if let Some(secret) = bootstrap {
            let request = KeyRequest {
                name: "bootstrap".to_owned(),
                scope: Scope::Admin,
                tasks: None,
            };
            // Replicas starting together all try; the first one's row stays.
            if store.add_key(&key_row(secret, &request)?).await? {
                tracing::info!("added the bootstrap admin key");
            }
        }
        let keyring = Self {
            store,
            require_auth,
            snapshot: RwLock::new(Arc::default()),
            reloading: tokio::sync::Mutex::new(()),
        };
        keyring.reload().await?;
        Ok(keyring)
    }

    /// Reads the key table again; keys created or revoked elsewhere take effect.
    ///
    /// # Errors
    /// When the database fails; the keys read before stay in force.
    pub async fn reload(&self) -> Result<(), AuthError> {
        let _reloading = self.reloading.lock().await;
        let rows = self.store.keys().await?;
        let mut live = HashMap::new();
        for row in &rows {
            if row.revoked_at.is_none() {
                live.insert(row.hash.clone(), KeyInfo::from_row(row)?);
            }
        }
        let required = self.require_auth || !rows.is_empty();
        let snapshot = Arc::new(Snapshot { live, required });
        let was_required = std::mem::replace(&mut *self.write(), snapshot).required;
        if required && !was_required {
            tracing::info!("an API key exists: every /v1 request now needs one");
        }
        Ok(())
    }

    fn current(&self) -> Arc<Snapshot> {
        // A poisoned lock still holds a whole snapshot: it is only ever swapped.
        Arc::clone(&self.snapshot.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Arc<Snapshot>> {
        self.snapshot.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether requests need a key.
    pub fn required(&self) -> bool {
        self.current().required
    }

    /// Who holds `bearer` (the key of an `Authorization: Bearer` header).
    ///
    /// # Errors
    /// [`AuthError::Missing`] without a key while auth is on; [`AuthError::Invalid`] for
    /// a key that is unknown or revoked, whether auth is on or not.
    pub fn caller(&self, bearer: Option<&str>) -> Result<Caller, AuthError> {
        let snapshot = self.current();
        match bearer {
            None if snapshot.required => Err(AuthError::Missing),
            None => Ok(Caller::Anonymous),
            Some(secret) => snapshot
                .live
                .get(&hash_key(secret))
                .map(|key| Caller::Key(key.clone()))
                .ok_or(AuthError::Invalid),
        }
    }

    /// Makes a key, stores its hash, and answers the key itself, this once.
    ///
    /// # Errors
    /// When the request is not well-formed or the database fails.
    pub async fn create(&self, request: &KeyRequest) -> Result<NewKey, AuthError> {
        let secret = fresh_secret();
        let row = key_row(&secret, request)?;
        self.store.add_key(&row).await?;
        self.reload().await?;
        Ok(NewKey {
            secret,
            info: KeyInfo::from_row(&row)?,
        })
    }

    /// Every key, revoked ones included, oldest first.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn list(&self) -> Result<Vec<KeyInfo>, AuthError> {
        let rows = self.store.keys().await?;
        Ok(rows
            .iter()
            .map(KeyInfo::from_row)
            .collect::<Result<_, _>>()?)
    }

    /// Revokes the key `id`; answers whether a live key had that id.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn revoke(&self, id: &str) -> Result<bool, AuthError> {
        let revoked = self.store.revoke_key(id).await?;
        self.reload().await?;
        Ok(revoked)
    }
}
