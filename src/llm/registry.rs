//! The LLMs one server has loaded, by name: a task names the one it runs on, the first
//! loaded is the default. Each has its own worker (scheduler, queue and share of the
//! KV budget), so a busy model does not hold up the others.

use std::sync::Arc;

use super::LlmHandle;

/// A model name that is not among those loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model `{name}` is not loaded; loaded: {loaded}")]
pub struct UnknownModel {
    /// The name asked for.
    pub name: String,
    /// The loaded names, comma-separated.
    pub loaded: String,
}

/// The loaded LLMs in the order they were given; never empty.
#[derive(Clone)]
pub struct LlmRegistry {
    models: Arc<Vec<(String, LlmHandle)>>,
}

impl LlmRegistry {
    /// The registry of `models` (name, handle), the first the default; the
    /// configuration has refused an empty or repeated list before anything loaded
    /// ([`crate::config::ModelConfig::check`]).
    pub fn new(models: Vec<(String, LlmHandle)>) -> Self {
        Self {
            models: Arc::new(models),
        }
    }

    /// The model a task that names none runs on.
    ///
    /// # Errors
    /// When the registry is empty.
    pub fn default_model(&self) -> Result<&LlmHandle, UnknownModel> {
        self.get(None)
    }

    /// The model called `name`, or the default for `None`.
    ///
    /// # Errors
    /// [`UnknownModel`] naming the loaded models.
    pub fn get(&self, name: Option<&str>) -> Result<&LlmHandle, UnknownModel> {
        self.named(name).map(|(_, handle)| handle)
    }

    /// The model called `name`, or the default for `None`, with its served name.
    ///
    /// # Errors
    /// [`UnknownModel`] naming the loaded models.
    pub fn named(&self, name: Option<&str>) -> Result<(&str, &LlmHandle), UnknownModel> {
        let found = match name {
            None => self.models.first(),
            Some(name) => self.models.iter().find(|(n, _)| n == name),
        };
        found
            .map(|(n, handle)| (n.as_str(), handle))
            .ok_or_else(|| UnknownModel {
                name: name.unwrap_or_default().to_owned(),
                loaded: self.names().collect::<Vec<_>>().join(", "),
            })
    }

    /// The loaded models' names, the default first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.iter().map(|(name, _)| name.as_str())
    }

    /// Each loaded model with its name, the default first.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &LlmHandle)> {
        self.models
            .iter()
            .map(|(name, handle)| (name.as_str(), handle))
    }
}
