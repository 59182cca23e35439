//! Task templates: how an input and its label are written into a prompt.
//!
//! A template is text with placeholders `{text}`, `{text_pair}` and `{label}`; `{{` and
//! `}}` stand for literal braces. Templates are checked when a task is written, so
//! rendering never fails.

use serde::{Deserialize, Serialize};

/// A placeholder a template may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The input text.
    Text,
    /// The second input text of a pair task.
    TextPair,
    /// The label (or, for generation tasks, the output).
    Label,
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Slot(Slot),
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{name}` that is not one of the placeholders.
    #[error("`{{{0}}}` is not a placeholder: use {{text}}, {{text_pair}} or {{label}} (write {{{{ and }}}} for literal braces)")]
    UnknownPlaceholder(String),
    /// A `{` without its `}`, or a lone `}`.
    #[error("unbalanced brace at byte {0}: write {{{{ or }}}} for a literal brace")]
    UnbalancedBrace(usize),
    /// A placeholder where it is not allowed.
    #[error("{0}")]
    Misplaced(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `source`.
    ///
    /// # Errors
    /// On an unknown placeholder or an unbalanced brace.
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, n)| n) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, n)| n) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &source[at + 1..];
                    let end = rest.find('}').ok_or(TemplateError::UnbalancedBrace(at))?;
                    let name = &rest[..end];
                    let slot = match name {
                        "text" => Slot::Text,
                        "text_pair" => Slot::TextPair,
                        "label" => Slot::Label,
                        other => return Err(TemplateError::UnknownPlaceholder(other.to_owned())),
                    };
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Slot(slot));
                    for _ in 0..=name.chars().count() {
                        chars.next();
                    }
                }
                '}' => return Err(TemplateError::UnbalancedBrace(at)),
                other => literal.push(other),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Self { pieces })
    }

    /// How many times `slot` appears.
    pub fn count(&self, slot: Slot) -> usize {
        self.pieces
            .iter()
            .filter(|p| **p == Piece::Slot(slot))
            .count()
    }

    /// Writes the template with its placeholders filled.
    pub fn render(&self, text: &str, text_pair: Option<&str>, label: &str) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Slot(Slot::Text) => out.push_str(text),
                Piece::Slot(Slot::TextPair) => out.push_str(text_pair.unwrap_or_default()),
                Piece::Slot(Slot::Label) => out.push_str(label),
            }
        }
        out
    }
}

/// A task's pair of templates, as written in its definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// How the input is written, e.g. `Review: {text}`.
    pub input: String,
    /// How the answer is written, e.g. `Sentiment: {label}`.
    pub output: String,
}

/// The checked templates of a task.
#[derive(Debug, Clone)]
pub struct PromptTemplates {
    /// The input template: `{text}`, optionally `{text_pair}`.
    pub input: Template,
    /// The output template: `{label}` exactly once.
    pub output: Template,
}

impl PromptTemplates {
    /// Parses and checks both templates.
    ///
    /// # Errors
    /// When a template has an unknown placeholder, an unbalanced brace, the input lacks
    /// `{text}` or holds `{label}`, or the output does not hold `{label}` exactly once.
    pub fn parse(spec: &TemplateSpec) -> Result<Self, (&'static str, TemplateError)> {
        let input = Template::parse(&spec.input).map_err(|e| ("template.input", e))?;
        let output = Template::parse(&spec.output).map_err(|e| ("template.output", e))?;
        if input.count(Slot::Text) == 0 {
            return Err((
                "template.input",
                TemplateError::Misplaced("the input template must hold {text}".into()),
            ));
        }
        if input.count(Slot::Label) > 0 {
            return Err((
                "template.input",
                TemplateError::Misplaced(
                    "the input template must not hold {label}: it belongs in the output template"
                        .into(),
                ),
            ));
        }
        let labels = output.count(Slot::Label);
        if labels != 1 {
            return Err((
                "template.output",
                TemplateError::Misplaced(format!(
                    "the output template must hold {{label}} exactly once, it holds it {labels} times"
                )),
            ));
        }
        if output.count(Slot::Text) + output.count(Slot::TextPair) > 0 {
            return Err((
                "template.output",
                TemplateError::Misplaced("the output template may hold only {label}".into()),
            ));
        }
        Ok(Self { input, output })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(input: &str, output: &str) -> TemplateSpec {
        TemplateSpec {
            input: input.into(),
            output: output.into(),
        }
    }

    #[test]
    fn templates_render_placeholders_and_escaped_braces() {
        let t = Template::parse("Q: {text} {{x}} / {text_pair}").expect("valid");
        assert_eq!(t.render("a", Some("b"), "l"), "Q: a {x} / b");
        let t = Template::parse("A: {label}").expect("valid");
        assert_eq!(t.render("a", None, "yes"), "A: yes");
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        assert_eq!(
            Template::parse("{txt}"),
            Err(TemplateError::UnknownPlaceholder("txt".into()))
        );
        assert_eq!(
            Template::parse("a {text"),
            Err(TemplateError::UnbalancedBrace(2))
        );
        assert_eq!(
            Template::parse("a } b"),
            Err(TemplateError::UnbalancedBrace(2))
        );
        let field = |s: TemplateSpec| PromptTemplates::parse(&s).err().map(|(f, _)| f);
        assert_eq!(field(spec("Review: {text}", "Sentiment: {label}")), None);
        assert_eq!(
            field(spec("Review:", "Sentiment: {label}")),
            Some("template.input")
        );
        assert_eq!(
            field(spec("{text} {label}", "{label}")),
            Some("template.input")
        );
        assert_eq!(field(spec("{text}", "Sentiment:")), Some("template.output"));
        assert_eq!(
            field(spec("{text}", "{label} {label}")),
            Some("template.output")
        );
        assert_eq!(
            field(spec("{text}", "{label} {text}")),
            Some("template.output")
        );
    }
}
