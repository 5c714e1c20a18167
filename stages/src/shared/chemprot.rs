//! The ChemProt task vocabulary: which tasks list entities and which list relations, how a
//! list item and a relation line are written, and how an entity is normalised. Convert
//! rewrites completions with it, clean checks them, and the extraction metrics score them, so
//! all three read one definition.

use std::sync::LazyLock;

use regex::Regex;

/// Tasks whose completions are entity lists.
pub const ENTITY_TASKS: &[&str] = &["chemicals", "diseases"];
/// Task whose completions are relation lists.
pub const RELATION_TASK: &str = "influences";

/// A relation line as the ChemProt prompts write it: `- Chemical X influences disease Y`
/// (any case, any bullet, stray whitespace); the captures are X and Y.
pub static RELATION_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^\s*[-*•]?\s*chemical\s+(.+?)\s+influences\s+disease\s+(.+?)\s*$")
        .expect("valid regex")
});

/// Lower-cases, folds whitespace and straightens typographic quotes; hyphens are kept.
pub fn normalize_entity(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        for c in word.chars() {
            match c {
                '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' | '\u{2032}' => out.push('\''),
                '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{201F}' | '\u{2033}' => out.push('"'),
                c => out.extend(c.to_lowercase()),
            }
        }
    }
    out
}

/// A list item's text: the line without its bullet (`-`, `*` or `•`), if it has one.
pub fn item_text(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let rest = t
        .strip_prefix('-')
        .or_else(|| t.strip_prefix('*'))
        .or_else(|| t.strip_prefix('•'))?;
    Some(rest.trim())
}
