//! Encoding rows and aligning labels with sub-tokens.

use medtune_schemas::IGNORED_LABEL as IGNORE;

use crate::shared::tokenizer::template::PromptTemplate;
use crate::shared::tokenizer::{Overflow, TextEncoder, TokenizeConfig, TruncationSide};

/// One encoded sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// One label per id (`IGNORE` where there is none).
    pub labels: Vec<i32>,
    /// Leading tokens that belong to the prompt (SFT), 0 for token classification.
    pub prompt_tokens: usize,
}

impl Tokenized {
    /// Positions the loss counts. For SFT (`causal`) position t is scored against label t+1,
    /// so the first label never counts.
    pub fn labelled(&self, causal: bool) -> usize {
        let from = usize::from(causal).min(self.labels.len());
        self.labels[from..].iter().filter(|&&l| l != IGNORE).count()
    }
}

/// BIO labels and their ids: `O`, then `B-` and `I-` of each entity type, types sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMap {
    labels: Vec<String>,
}

impl LabelMap {
    /// The map of every label the tags use (both forms of each entity type).
    pub fn from_tags<'a>(tags: impl Iterator<Item = &'a str>) -> Result<Self, String> {
        let mut types = std::collections::BTreeSet::new();
        for tag in tags {
            match tag.split_once('-') {
                Some(("B" | "I", kind)) if !kind.is_empty() => {
                    types.insert(kind.to_string());
                }
                None if tag == "O" => {}
                _ => return Err(format!("tag `{tag}` is not O, B-TYPE or I-TYPE")),
            }
        }
        let mut labels = vec!["O".to_string()];
        for kind in types {
            labels.push(format!("B-{kind}"));
            labels.push(format!("I-{kind}"));
        }
        Ok(LabelMap { labels })
    }

    /// A fixed map: `labels` in id order, each `O`, `B-TYPE` or `I-TYPE`, no repeats.
    pub fn from_labels(labels: &[String]) -> Result<Self, String> {
        for (i, label) in labels.iter().enumerate() {
            let valid = label == "O"
                || matches!(label.split_once('-'), Some(("B" | "I", kind)) if !kind.is_empty());
            if !valid {
                return Err(format!("label `{label}` is not O, B-TYPE or I-TYPE"));
            }
            if labels[..i].contains(label) {
                return Err(format!("label `{label}` is listed twice"));
            }
        }
        Ok(LabelMap {
            labels: labels.to_vec(),
        })
    }

    /// Labels by id.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The id of `label`.
    pub fn id(&self, label: &str) -> Result<i32, String> {
        self.labels
            .iter()
            .position(|l| l == label)
            .map(|i| i as i32)
            .ok_or_else(|| format!("label `{label}` is not in the label map {:?}", self.labels))
    }

    /// The id a continuation sub-token gets with `label_all_tokens`: the I- form.
    fn continuation(&self, label: &str) -> Result<i32, String> {
        match label.split_once('-') {
            Some((_, kind)) => self.id(&format!("I-{kind}")),
            None => self.id(label),
        }
    }
}

/// Windows of one BIO sentence, and what truncation dropped.
#[derive(Debug, Default)]
pub struct WordsEncoded {
    /// One sequence, or several windows.
    pub windows: Vec<Tokenized>,
    /// Words whose first sub-token was cut off.
    pub dropped_words: u64,
    /// Tokens cut off.
    pub dropped_tokens: u64,
    /// Entities (B- words) cut off.
    pub dropped_entities: u64,
}

/// Encodes pre-tokenized `words` and aligns `tags` with their first sub-tokens.
pub fn encode_words(
    encoder: &TextEncoder,
    words: &[&str],
    tags: &[&str],
    map: &LabelMap,
    cfg: &TokenizeConfig,
) -> Result<WordsEncoded, String> {
    if words.len() != tags.len() {
        return Err(format!("{} words but {} tags", words.len(), tags.len()));
    }
    let encoded = encoder.encode_words(words)?;
    let (prefix, suffix) = (&encoded.prefix[..], &encoded.suffix[..]);
    let mut labels = Vec::with_capacity(encoded.ids.len());
    let mut seen = vec![false; words.len()];
    let mut first_position = vec![usize::MAX; words.len()];
    for (pos, word) in encoded.word_of.iter().enumerate() {
        let Some(w) = word.map(|w| w as usize) else {
            labels.push(IGNORE);
            continue;
        };
        if !seen[w] {
            seen[w] = true;
            first_position[w] = pos;
            labels.push(map.id(tags[w])?);
        } else if cfg.label_all_tokens {
            labels.push(map.continuation(tags[w])?);
        } else {
            labels.push(IGNORE);
        }
    }
    let content = &encoded.ids[..];
    let budget = cfg
        .max_length
        .saturating_sub(prefix.len() + suffix.len())
        .max(1);
    let wrap = |range: std::ops::Range<usize>| Tokenized {
        ids: [prefix, &content[range.clone()], suffix].concat(),
        labels: [
            vec![IGNORE; prefix.len()],
            labels[range].to_vec(),
            vec![IGNORE; suffix.len()],
        ]
        .concat(),
        prompt_tokens: 0,
    };
    let mut out = WordsEncoded::default();
    if content.len() <= budget {
        out.windows.push(wrap(0..content.len()));
        return Ok(out);
    }
    match cfg.overflow {
        Overflow::Truncate => {
            let kept = match cfg.truncation_side {
                TruncationSide::Right => 0..budget,
                TruncationSide::Left => content.len() - budget..content.len(),
            };
            out.dropped_tokens = (content.len() - budget) as u64;
            // A word is lost when its labelled (first) sub-token is cut.
            for (w, &pos) in first_position.iter().enumerate() {
                if pos != usize::MAX && !kept.contains(&pos) {
                    out.dropped_words += 1;
                    out.dropped_entities += u64::from(tags[w].starts_with("B-"));
                }
            }
            out.windows.push(wrap(kept));
        }
        Overflow::Window => {
            let step = budget - cfg.stride.min(budget - 1);
            let mut start = 0;
            loop {
                let end = (start + budget).min(content.len());
                out.windows.push(wrap(start..end));
                if end == content.len() {
                    break;
                }
                start += step;
            }
        }
    }
    Ok(out)
}

/// Encodes an SFT row: `[bos] template(prompt) completion eos`, labels -100 over the prompt.
/// Returns the sequence and the number of tokens truncation dropped.
pub fn encode_sft(
    encoder: &TextEncoder,
    template: &PromptTemplate,
    prompt: &str,
    completion: &str,
    eos: u32,
    cfg: &TokenizeConfig,
) -> Result<(Tokenized, u64), String> {
    let rendered = template.render(prompt)?;
    let encode = |text: &str| encoder.encode(text);
    let bos: Vec<u32> = template
        .bos_candidates()
        .iter()
        .find_map(|t| encoder.tokenizer().token_to_id(t))
        .into_iter()
        .collect();
    let bos_len = bos.len();
    let mut prompt_ids = [bos, encode(&rendered)?].concat();
    let completion_ids = [encode(completion)?, vec![eos]].concat();
    let over = (prompt_ids.len() + completion_ids.len()).saturating_sub(cfg.max_length);
    if cfg.truncation_side == TruncationSide::Left {
        // The prompt loses its start (the BOS stays), so the completion survives whole when
        // it fits at all.
        let from_prompt = over.min(prompt_ids.len() - bos_len);
        prompt_ids.drain(bos_len..bos_len + from_prompt);
    }
    let mut ids = [prompt_ids.as_slice(), completion_ids.as_slice()].concat();
    let mut labels: Vec<i32> = std::iter::repeat_n(IGNORE, prompt_ids.len())
        .chain(completion_ids.iter().map(|&id| id as i32))
        .collect();
    ids.truncate(cfg.max_length);
    labels.truncate(cfg.max_length);
    let dropped = over as u64;
    let prompt_tokens = prompt_ids.len().min(ids.len());
    Ok((
        Tokenized {
            ids,
            labels,
            prompt_tokens,
        },
        dropped,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_map_is_o_then_b_and_i_per_sorted_type() {
        let map = LabelMap::from_tags(["O", "I-Disease", "B-Chemical", "O"].into_iter()).unwrap();
        assert_eq!(
            map.labels(),
            ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]
        );
        assert_eq!(map.id("I-Disease"), Ok(4));
        assert!(map
            .id("B-Gene")
            .unwrap_err()
            .contains("not in the label map"));
        assert!(LabelMap::from_tags(["X-Y"].into_iter()).is_err());
        assert_eq!(map.continuation("B-Chemical"), Ok(2));
    }
}
