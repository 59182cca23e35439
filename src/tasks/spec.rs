//! A task's definition: its labels, instruction, templates and separator.

use serde::{Deserialize, Serialize};

use crate::predict::defaults::PredictDefaults;
use crate::prompt::{PromptTemplates, TemplateSpec};

/// The most labels a task may have.
pub const MAX_LABELS: usize = 100;
/// The longest label, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;
/// The longest instruction, in bytes.
pub const MAX_INSTRUCTION_BYTES: usize = 16 * 1024;
/// The longest task name.
pub const MAX_NAME_LEN: usize = 64;

fn default_separator() -> String {
    "\n\n".to_owned()
}

/// A task as the client writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The labels to choose from; empty for a generation task.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Text placed before the demonstrations.
    #[serde(default)]
    pub instruction: String,
    /// How inputs and labels are written.
    pub template: TemplateSpec,
    /// What joins the instruction, demonstrations and query.
    #[serde(default = "default_separator")]
    pub separator: String,
    /// Prediction options for requests that leave them out (written by the tune job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<PredictDefaults>,
    /// The LLM the task runs on, by its served name; the server's default if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// A task definition that passed every check.
#[derive(Debug, Clone)]
pub struct ValidTask {
    /// The definition as written.
    pub spec: TaskSpec,
    /// Its parsed templates.
    pub templates: PromptTemplates,
}

/// Why a task definition was refused: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct SpecError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn spec_error(field: &'static str, message: impl Into<String>) -> SpecError {
    SpecError {
        field,
        message: message.into(),
    }
}

/// Checks a task name: 1 to 64 letters, digits, `-`, `_` or `.`.
///
/// # Errors
/// When the name is empty, too long or holds another character.
pub fn check_name(name: &str) -> Result<(), SpecError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(spec_error(
            "task",
            format!("`{name}` is not a valid task name: use 1 to {MAX_NAME_LEN} letters, digits, `-`, `_` or `.`"),
        ))
    }
}

impl TaskSpec {
    /// Checks labels and templates.
    ///
    /// # Errors
    /// When a label is empty or repeated, there are too many, or a template is wrong.
    pub fn validate(self) -> Result<ValidTask, SpecError> {
        if self.labels.len() > MAX_LABELS {
            return Err(spec_error(
                "labels",
                format!("{} labels given; at most {MAX_LABELS}", self.labels.len()),
            ));
        }
        for (i, label) in self.labels.iter().enumerate() {
            if label.trim().is_empty() {
                return Err(spec_error("labels", format!("label {i} is empty")));
            }
            if label.len() > MAX_LABEL_BYTES {
                return Err(spec_error(
                    "labels",
                    format!(
                        "label {i} has {} bytes; at most {MAX_LABEL_BYTES}",
                        label.len()
                    ),
                ));
            }
            if self.labels[..i].contains(label) {
                return Err(spec_error("labels", format!("label `{label}` is repeated")));
            }
        }
        if self.instruction.len() > MAX_INSTRUCTION_BYTES {
            return Err(spec_error(
                "instruction",
                format!(
                    "{} bytes given; at most {MAX_INSTRUCTION_BYTES}",
                    self.instruction.len()
                ),
            ));
        }
        if let Some(defaults) = &self.defaults {
            defaults
                .check(&self.labels)
                .map_err(|(field, message)| spec_error(field, message))?;
        }
        let templates = PromptTemplates::parse(&self.template).map_err(|(field, e)| SpecError {
            field,
            message: e.to_string(),
        })?;
        Ok(ValidTask {
            spec: self,
            templates,
        })
    }

    /// Whether the task chooses among labels (else it generates text).
    pub fn is_classification(&self) -> bool {
        !self.labels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(labels: &[&str]) -> TaskSpec {
        TaskSpec {
            labels: labels.iter().map(|s| s.to_string()).collect(),
            instruction: String::new(),
            template: TemplateSpec {
                input: "Review: {text}".into(),
                output: "Sentiment: {label}".into(),
            },
            separator: "\n\n".into(),
            defaults: None,
            model: None,
        }
    }

    #[test]
    fn labels_must_be_distinct_and_non_empty() {
        assert!(spec(&["negative", "positive"]).validate().is_ok());
        assert!(spec(&[]).validate().is_ok());
        assert_eq!(
            spec(&["a", "a"]).validate().err().map(|e| e.field),
            Some("labels")
        );
        assert_eq!(
            spec(&["a", " "]).validate().err().map(|e| e.field),
            Some("labels")
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("sst2-v1.0_x").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
    }
}
