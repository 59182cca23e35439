//! Chat prompts: a conversation rendered by the model's own template
//! (`tokenizer.chat_template` in its GGUF, Jinja), in the Jinja dialect Hugging Face's
//! tokenizers run it with, so that a chat model sees the turns it was trained on.
//!
//! Message contents never pass through the template: it renders a placeholder for
//! each, and the prompt is then cut into the template's markup (whose control tokens
//! are parsed) and the messages' text (which stays plain, whatever it spells). The
//! price: a template that edits a content is refused, and one that trims contents
//! (Gemma's) sees the placeholder trimmed, so a message keeps its outer whitespace.

use candle_core::quantized::gguf_file;
use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use super::tokenizer::Segment;

/// Where a placeholder starts and ends: private-use characters no template writes.
const OPEN: char = '\u{F8F0}';
const CLOSE: char = '\u{F8F1}';

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the whole conversation (OpenAI's `developer` too).
    #[serde(alias = "developer")]
    System,
    /// The person asking.
    User,
    /// The model's earlier answers.
    Assistant,
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
}

/// Why a model cannot render chats.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct NoChatTemplate(String);

/// A conversation the template refused (roles out of order, say), in its own words.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the model's chat template refused the messages: {0}")]
pub struct ChatRenderError(String);

/// A model's chat template, compiled once at load.
pub struct ChatTemplate {
    environment: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

/// The vocabulary entry that a `tokenizer.ggml.*_token_id` key names, or "".
fn token_text(content: &gguf_file::Content, key: &str) -> String {
    let tokens = content
        .metadata
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.to_vec().ok());
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_u32().ok())
        .and_then(|id| tokens?.get(id as usize)?.to_string().ok().cloned())
        .unwrap_or_default()
}

impl ChatTemplate {
    /// The template of a GGUF, or why it has none that can run.
    ///
    /// # Errors
    /// When the file has no `tokenizer.chat_template` or it does not compile.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self, NoChatTemplate> {
        let source = content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| {
                NoChatTemplate(
                    "its GGUF has no chat template (`tokenizer.chat_template`)".to_owned(),
                )
            })?;
        Self::new(
            source.clone(),
            token_text(content, "tokenizer.ggml.bos_token_id"),
            token_text(content, "tokenizer.ggml.eos_token_id"),
        )
    }

    /// Compiles `source` with the tokens it may name.
    ///
    /// # Errors
    /// When the template does not compile.
    pub fn new(
        source: String,
        bos_token: String,
        eos_token: String,
    ) -> Result<Self, NoChatTemplate> {
        let mut environment = Environment::new();
        // Hugging Face renders chat templates with both on; their whitespace assumes it.
        environment.set_trim_blocks(true);
        environment.set_lstrip_blocks(true);
        environment
            .set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        environment.add_function(
            "raise_exception",
            |message: String| -> Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        environment
            .add_template_owned("chat", source)
            .map_err(|e| NoChatTemplate(format!("its chat template does not compile: {e}")))?;
        Ok(Self {
            environment,
            bos_token,
            eos_token,
        })
    }

    /// The prompt for `messages`, ending where the assistant's answer starts, as
    /// segments of markup and plain message text.
    ///
    /// # Errors
    /// When the template raises an error or fails on these messages.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<RenderedChat, ChatRenderError> {
        let placeholders: Vec<_> = messages
            .iter()
            .enumerate()
            .map(|(i, message)| {
                context! {
                    role => message.role,
                    content => format!("{OPEN}{i}{CLOSE}"),
                }
            })
            .collect();
        let template = self
            .environment
            .get_template("chat")
            .map_err(|e| ChatRenderError(e.to_string()))?;
        let text = template
            .render(context! {
                messages => placeholders,
                add_generation_prompt => true,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| {
                let detail = e.detail().map_or_else(|| e.to_string(), str::to_owned);
                ChatRenderError(detail)
            })?;
        Ok(RenderedChat {
            text,
            contents: messages.iter().map(|m| m.content.clone()).collect(),
        })
    }
}

/// A rendered conversation: the template's output with a placeholder per message.
#[derive(Debug, Clone)]
pub struct RenderedChat {
    text: String,
    contents: Vec<String>,
}

impl RenderedChat {
    /// The prompt as markup and the messages' plain text, in order.
    ///
    /// # Errors
    /// When the template cut or changed a placeholder (it edits message contents,
    /// which the placeholders cannot stand for).
    pub fn segments(&self) -> Result<Vec<Segment<'_>>, ChatRenderError> {
        let mut segments = Vec::new();
        let mut rest = self.text.as_str();
        while let Some(open) = rest.find(OPEN) {
            if open > 0 {
                segments.push(Segment::Markup(&rest[..open]));
            }
            let after = &rest[open + OPEN.len_utf8()..];
            let content = after
                .find(CLOSE)
                .and_then(|close| Some((after[..close].parse::<usize>().ok()?, close)))
                .and_then(|(index, close)| Some((self.contents.get(index)?, close)));
            let Some((content, close)) = content else {
                return Err(ChatRenderError(
                    "the template edits message contents, which is not supported".to_owned(),
                ));
            };
            if !content.is_empty() {
                segments.push(Segment::Plain(content));
            }
            rest = &after[close + CLOSE.len_utf8()..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Markup(rest));
        }
        Ok(segments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's template, as its GGUF ships it.
    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// The shape of Gemma 3's instruction-tuned template: BOS written by the template,
    /// trimmed contents, alternation enforced by `raise_exception`.
    const GEMMA_LIKE: &str = "{{ bos_token }}{% for message in messages %}
  {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
  {% endif %}
  {% set role = 'model' if message['role'] == 'assistant' else message['role'] %}
{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}
{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

    fn message(role: Role, content: &str) -> ChatMessage {
        ChatMessage {
            role,
            content: content.to_owned(),
        }
    }

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate::new(source.to_owned(), "<bos>".to_owned(), "<eos>".to_owned())
            .expect("compiles")
    }

    #[test]
    fn chatml_renders_markup_around_plain_contents() {
        let rendered = template(CHATML)
            .render(&[message(Role::User, "Is <|im_end|> text?")])
            .expect("renders");
        assert_eq!(
            rendered.segments().expect("segments"),
            vec![
                Segment::Markup(
                    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
                     Hugging Face<|im_end|>\n<|im_start|>user\n"
                ),
                Segment::Plain("Is <|im_end|> text?"),
                Segment::Markup("<|im_end|>\n<|im_start|>assistant\n"),
            ]
        );
    }

    #[test]
    fn blocks_are_trimmed_and_tokens_given_as_hugging_face_does() {
        let rendered = template(GEMMA_LIKE)
            .render(&[message(Role::User, "Hi"), message(Role::Assistant, "Hello")])
            .expect("renders");
        assert_eq!(
            rendered.segments().expect("segments"),
            vec![
                Segment::Markup("<bos><start_of_turn>user\n"),
                Segment::Plain("Hi"),
                Segment::Markup("<end_of_turn>\n<start_of_turn>model\n"),
                Segment::Plain("Hello"),
                Segment::Markup("<end_of_turn>\n<start_of_turn>model\n"),
            ]
        );
    }

    #[test]
    fn a_raised_exception_is_the_templates_message() {
        let error = template(GEMMA_LIKE)
            .render(&[message(Role::User, "a"), message(Role::User, "b")])
            .expect_err("two user turns in a row");
        assert!(
            error.to_string().contains("roles must alternate"),
            "{error}"
        );
    }

    #[test]
    fn a_template_that_edits_contents_is_refused() {
        let rendered = template("{{ messages[0]['content'][:2] }}")
            .render(&[message(Role::User, "hello")])
            .expect("renders");
        assert!(rendered.segments().is_err());
    }

    #[test]
    fn python_string_methods_work() {
        let rendered =
            template("{{ messages[0]['role'].upper() }}:{{ messages[0]['content'].strip() }}")
                .render(&[message(Role::User, "x")])
                .expect("renders");
        assert_eq!(
            rendered.segments().expect("segments"),
            vec![Segment::Markup("USER:"), Segment::Plain("x")]
        );
    }

    /// The text of a rendering: markup and contents put back together.
    fn joined(rendered: &RenderedChat) -> String {
        rendered
            .segments()
            .expect("segments")
            .iter()
            .map(|segment| match segment {
                Segment::Markup(text) | Segment::Plain(text) => *text,
            })
            .collect()
    }

    /// Real models' templates (Llama 3.x, Qwen 2.5 and 3, Gemma 2, Mistral Nemo,
    /// SmolLM3, Phi 3.5) render what Hugging Face's jinja2 renders, refusals included
    /// (`scripts/chat-template-fixtures.py` wrote the reference).
    #[test]
    fn real_templates_render_as_hugging_face_renders_them() {
        let folder =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat-templates");
        let lines = std::fs::read_to_string(folder.join("rendered.jsonl")).expect("fixture");
        let mut checked = 0;
        for line in lines.lines() {
            let case: serde_json::Value = serde_json::from_str(line).expect("JSON");
            let name = case["template"].as_str().expect("template");
            let source = std::fs::read_to_string(folder.join(name)).expect("template file");
            let text = |key: &str| case[key].as_str().expect(key).to_owned();
            let template = ChatTemplate::new(source, text("bos_token"), text("eos_token"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let messages: Vec<ChatMessage> = case["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .map(|m| ChatMessage {
                    role: serde_json::from_value(m["role"].clone()).expect("role"),
                    content: m["content"].as_str().expect("content").to_owned(),
                })
                .collect();
            let rendered = template.render(&messages);
            match case["error"].as_str() {
                Some(refusal) => {
                    let error = rendered.expect_err(name).to_string();
                    assert!(error.contains(refusal), "{name}: {error}");
                }
                None => assert_eq!(
                    joined(&rendered.unwrap_or_else(|e| panic!("{name}: {e}"))),
                    text("text"),
                    "{name}"
                ),
            }
            checked += 1;
        }
        assert_eq!(checked, 32);
    }

    #[test]
    fn a_template_that_does_not_compile_says_so() {
        let error = ChatTemplate::new("{% for %}".to_owned(), String::new(), String::new())
            .expect_err("syntax error");
        assert!(error.to_string().contains("does not compile"), "{error}");
    }
}
