//! Chat templates for SFT prompts: built-in ones, or the model's own Jinja template rendered
//! the way transformers' `apply_chat_template` renders it.

use std::path::{Path, PathBuf};

use medtune_qlora::gguf::{is_gguf, GgufFile};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

/// How a prompt is wrapped before it is encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatTemplate {
    /// The prompt as it is.
    #[default]
    Plain,
    /// Mistral instruct: `[INST] prompt [/INST]`.
    Mistral,
    /// Llama 3 chat: a user turn, then the assistant header.
    Llama3,
    /// The model's own chat template (a GGUF file's `tokenizer.chat_template`, or the
    /// `chat_template` of the `tokenizer_config.json` beside a `tokenizer.json`), with the
    /// prompt as one user message and the generation prompt added.
    Model,
}

impl ChatTemplate {
    /// The prompt text to encode (the beginning-of-sequence token is added as an id, not
    /// text). The model's template renders through [`PromptTemplate`]; here it is the prompt
    /// as it is.
    pub fn render(self, prompt: &str) -> String {
        match self {
            ChatTemplate::Plain | ChatTemplate::Model => prompt.to_string(),
            ChatTemplate::Mistral => format!("[INST] {} [/INST]", prompt.trim()),
            ChatTemplate::Llama3 => format!(
                "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>\
                 <|start_header_id|>assistant<|end_header_id|>\n\n",
                prompt.trim()
            ),
        }
    }

    /// Beginning-of-sequence tokens to look for, in order; the first the tokenizer knows is
    /// prepended (none for a plain template whose tokenizer has none).
    pub fn bos_candidates(self) -> &'static [&'static str] {
        match self {
            ChatTemplate::Plain => &["<s>", "<|begin_of_text|>", "[CLS]"],
            ChatTemplate::Mistral => &["<s>"],
            ChatTemplate::Llama3 => &["<|begin_of_text|>"],
            // The template writes any BOS itself.
            ChatTemplate::Model => &[],
        }
    }
}

/// A chat template ready to render prompts.
pub enum PromptTemplate {
    /// A built-in template.
    Builtin(ChatTemplate),
    /// The model's own.
    Model(Box<ModelTemplate>),
}

impl PromptTemplate {
    /// `template`, loading the model's own from the tokenizer at `tokenizer_path` when it is
    /// [`ChatTemplate::Model`].
    pub fn load(
        template: ChatTemplate,
        tokenizer_path: &Path,
        tokenizer: &Tokenizer,
    ) -> Result<Self, String> {
        match template {
            ChatTemplate::Model => Ok(PromptTemplate::Model(Box::new(ModelTemplate::load(
                tokenizer_path,
                tokenizer,
            )?))),
            builtin => Ok(PromptTemplate::Builtin(builtin)),
        }
    }

    /// The prompt text to encode.
    pub fn render(&self, prompt: &str) -> Result<String, String> {
        match self {
            PromptTemplate::Builtin(t) => Ok(t.render(prompt)),
            PromptTemplate::Model(t) => t.render(prompt),
        }
    }

    /// Beginning-of-sequence tokens to look for (see [`ChatTemplate::bos_candidates`]).
    pub fn bos_candidates(&self) -> &'static [&'static str] {
        match self {
            PromptTemplate::Builtin(t) => t.bos_candidates(),
            PromptTemplate::Model(_) => ChatTemplate::Model.bos_candidates(),
        }
    }
}

/// A model's Jinja chat template, with the special-token strings it may refer to.
pub struct ModelTemplate {
    env: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// Where a tokenizer's chat template lives: the GGUF file itself, or the
/// `tokenizer_config.json` beside a `tokenizer.json`.
pub fn template_file(tokenizer_path: &Path) -> PathBuf {
    if is_gguf(tokenizer_path) {
        tokenizer_path.to_path_buf()
    } else {
        tokenizer_path.with_file_name("tokenizer_config.json")
    }
}

/// A special token of `tokenizer_config.json`: a string, or an object with `content`.
fn config_token(config: &serde_json::Value, key: &str) -> Option<String> {
    match &config[key] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl ModelTemplate {
    fn load(tokenizer_path: &Path, tokenizer: &Tokenizer) -> Result<Self, String> {
        let file = template_file(tokenizer_path);
        let name = |id: Option<u32>| {
            id.and_then(|id| tokenizer.id_to_token(id))
                .unwrap_or_default()
        };
        let (source, bos_token, eos_token) = if is_gguf(&file) {
            let gguf = GgufFile::open(&file).map_err(|e| e.to_string())?;
            let source = gguf.chat_template().map(str::to_string).ok_or_else(|| {
                format!(
                    "{}: `tokenizer.chat_template`: the model has no chat template \
                     (`template = \"model\"` needs one)",
                    file.display()
                )
            })?;
            (
                source,
                name(gguf.token_id("tokenizer.ggml.bos_token_id")),
                name(gguf.eos_id()),
            )
        } else {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                format!(
                    "{}: {e} (`template = \"model\"` reads the chat template from it)",
                    file.display()
                )
            })?;
            let config: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| format!("{}: not JSON: {e}", file.display()))?;
            let source = match &config["chat_template"] {
                serde_json::Value::String(s) => s.clone(),
                // A list of named templates: the default one.
                serde_json::Value::Array(named) => named
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(str::to_string)
                    .ok_or_else(|| {
                        format!("{}: `chat_template` has no `default`", file.display())
                    })?,
                _ => {
                    return Err(format!(
                        "{}: `chat_template`: the model has no chat template \
                         (`template = \"model\"` needs one)",
                        file.display()
                    ))
                }
            };
            (
                source,
                config_token(&config, "bos_token").unwrap_or_default(),
                config_token(&config, "eos_token").unwrap_or_default(),
            )
        };
        let mut env = minijinja::Environment::new();
        // transformers renders with trim_blocks and lstrip_blocks.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        env.add_template_owned("chat", source)
            .map_err(|e| format!("{}: the chat template does not parse: {e}", file.display()))?;
        let template = ModelTemplate {
            env,
            bos_token,
            eos_token,
        };
        // A template that cannot render a prompt fails here, once, not on every row.
        template
            .render("")
            .map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(template)
    }

    /// The prompt as one user message, with the generation prompt (the assistant's header).
    fn render(&self, prompt: &str) -> Result<String, String> {
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(minijinja::context! {
                messages => vec![minijinja::context! { role => "user", content => prompt }],
                add_generation_prompt => true,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| format!("the chat template failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_wrap_the_prompt() {
        assert_eq!(ChatTemplate::Plain.render("Q?\n"), "Q?\n");
        assert_eq!(ChatTemplate::Mistral.render(" Q? "), "[INST] Q? [/INST]");
        assert!(ChatTemplate::Llama3
            .render("Q?")
            .ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n"));
    }
}
