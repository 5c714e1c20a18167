//! BIO tag checks: grammar, known entity types, and `I-X` continuations that start nowhere.

use serde::{Deserialize, Serialize};

use crate::record::RejectReason;

/// What to do with an `I-X` tag that follows `O` or a tag of another type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidContinuation {
    /// Reject the sentence.
    #[default]
    Reject,
    /// Rewrite the tag to `B-X` and count the repair.
    Repair,
}

/// BIO settings of the ingest stage (`[ingest.bio]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BioConfig {
    /// Policy for `I-X` after `O` or another type.
    pub invalid_continuation: InvalidContinuation,
    /// When set, tags of any other entity type are rejected.
    pub entity_types: Option<Vec<String>>,
}

/// A tag problem: the reason and a message naming the word.
pub type TagProblem = (RejectReason, String);

/// Checks (and under the repair policy, fixes) a sentence's tags. Returns how many tags were
/// repaired.
pub fn check_tags(
    words: &[String],
    tags: &mut [String],
    config: &BioConfig,
) -> Result<u64, TagProblem> {
    if words.len() != tags.len() {
        return Err((
            RejectReason::WordTagMismatch,
            format!("{} words but {} tags", words.len(), tags.len()),
        ));
    }
    if words.is_empty() {
        return Err((RejectReason::EmptyRecord, "no words".into()));
    }
    let mut repairs = 0;
    let mut previous_type: Option<String> = None;
    for (i, (word, tag)) in words.iter().zip(tags.iter_mut()).enumerate() {
        let at = || format!("word {} (`{word}`)", i + 1);
        if word.is_empty() {
            return Err((RejectReason::EmptyRecord, format!("{} is empty", at())));
        }
        let (prefix, kind) = match tag.as_str() {
            "O" => {
                previous_type = None;
                continue;
            }
            t => match t.split_once('-') {
                Some((p @ ("B" | "I"), k)) if !k.is_empty() => (p.to_string(), k.to_string()),
                _ => {
                    return Err((
                        RejectReason::InvalidTag,
                        format!("{}: tag `{tag}` is not O, B-TYPE or I-TYPE", at()),
                    ))
                }
            },
        };
        if let Some(types) = &config.entity_types {
            if !types.contains(&kind) {
                return Err((
                    RejectReason::UnknownEntityType,
                    format!("{}: entity type `{kind}` is not one of {types:?}", at()),
                ));
            }
        }
        if prefix == "I" && previous_type.as_deref() != Some(kind.as_str()) {
            let after = previous_type
                .as_ref()
                .map_or("O".to_string(), |t| format!("a {t} tag"));
            match config.invalid_continuation {
                InvalidContinuation::Reject => {
                    return Err((
                        RejectReason::InvalidBioSequence,
                        format!("{}: `{tag}` follows {after}", at()),
                    ))
                }
                InvalidContinuation::Repair => {
                    *tag = format!("B-{kind}");
                    repairs += 1;
                }
            }
        }
        previous_type = Some(kind);
    }
    Ok(repairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn check(tags: &[&str], config: &BioConfig) -> (Result<u64, TagProblem>, Vec<String>) {
        let words = strings(&vec!["w"; tags.len()]);
        let mut tags = strings(tags);
        (check_tags(&words, &mut tags, config), tags)
    }

    #[test]
    fn valid_sequences_pass_unchanged() {
        let (r, tags) = check(
            &["B-Disease", "I-Disease", "O", "B-Chemical"],
            &BioConfig::default(),
        );
        assert_eq!(r, Ok(0));
        assert_eq!(
            tags,
            strings(&["B-Disease", "I-Disease", "O", "B-Chemical"])
        );
    }

    #[test]
    fn i_after_o_or_another_type_is_rejected_or_repaired() {
        let (r, _) = check(&["O", "I-Disease"], &BioConfig::default());
        assert_eq!(r.unwrap_err().0, RejectReason::InvalidBioSequence);
        let (r, _) = check(&["B-Chemical", "I-Disease"], &BioConfig::default());
        assert!(r.unwrap_err().1.contains("follows a Chemical tag"));
        let repair = BioConfig {
            invalid_continuation: InvalidContinuation::Repair,
            ..Default::default()
        };
        let (r, tags) = check(&["I-Disease", "I-Disease", "O", "I-Chemical"], &repair);
        assert_eq!(r, Ok(2));
        assert_eq!(
            tags,
            strings(&["B-Disease", "I-Disease", "O", "B-Chemical"])
        );
    }

    #[test]
    fn malformed_and_unknown_tags_are_named() {
        let (r, _) = check(&["O", "X-Disease"], &BioConfig::default());
        let (reason, msg) = r.unwrap_err();
        assert_eq!(reason, RejectReason::InvalidTag);
        assert!(msg.contains("word 2") && msg.contains("X-Disease"), "{msg}");
        let (r, _) = check(&["B-"], &BioConfig::default());
        assert_eq!(r.unwrap_err().0, RejectReason::InvalidTag);
        let typed = BioConfig {
            entity_types: Some(strings(&["Disease"])),
            ..Default::default()
        };
        let (r, _) = check(&["B-Gene"], &typed);
        assert_eq!(r.unwrap_err().0, RejectReason::UnknownEntityType);
    }

    #[test]
    fn count_mismatch_and_empty_sentences_are_rejected() {
        let mut tags = strings(&["O"]);
        let r = check_tags(&strings(&["a", "b"]), &mut tags, &BioConfig::default());
        assert_eq!(r.unwrap_err().0, RejectReason::WordTagMismatch);
        let r = check_tags(&[], &mut [], &BioConfig::default());
        assert_eq!(r.unwrap_err().0, RejectReason::EmptyRecord);
    }
}
