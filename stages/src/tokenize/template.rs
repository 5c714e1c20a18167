//! Chat templates for SFT prompts.

use serde::{Deserialize, Serialize};

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
}

impl ChatTemplate {
    /// The prompt text to encode (the beginning-of-sequence token is added as an id, not text).
    pub fn render(self, prompt: &str) -> String {
        match self {
            ChatTemplate::Plain => prompt.to_string(),
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
        }
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
