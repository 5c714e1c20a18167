//! Picking the model from a directory's `config.json` (`model_type`), or a GGUF file's
//! `general.architecture`, and the task.

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::bert::{BertEncoder, BertTokenClassifier, Head, LoadOptions};
use crate::error::{QloraError, Result};
use crate::export::{load_adapter, read_adapter_config, save_adapter, AdapterSpec, PeftTask};
use crate::generate::{generate_greedy, GenerateOptions, Generation};
use crate::gguf::{is_gguf, GgufFile};
use crate::llama::LlamaDecoder;
use crate::lora::{LoraConfig, LoraLinear, Pass};
use crate::tasks::{CausalLm, DecoderTokenClassifier};
use crate::train::{TrainBatch, TrainModel};
use crate::weights::read_config;

/// What the model learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// A label per token (a head over the last hidden states).
    TokenClassification,
    /// Next-token prediction over the labelled (completion) tokens.
    CausalLm,
}

#[derive(Deserialize)]
struct ModelType {
    model_type: Option<String>,
}

/// What saving an adapter needs to know about a model.
struct Parts<'a> {
    linears: Box<dyn Iterator<Item = &'a LoraLinear> + 'a>,
    module_prefix: &'static str,
    head: Option<(&'static str, &'a Head)>,
    task: PeftTask,
}

/// A model with adapters attached, for one task.
pub enum AutoModel {
    /// BERT encoder + token head.
    BertTokens(BertTokenClassifier),
    /// Llama / Mistral + token head.
    DecoderTokens(DecoderTokenClassifier),
    /// Llama / Mistral as a causal LM.
    DecoderLm(CausalLm),
}

impl AutoModel {
    /// Loads the model in `dir` (a model directory, or a `.gguf` file) for `task` (`labels`
    /// classes for token classification) and attaches fresh adapters per `lora`, seeded with
    /// `seed`.
    pub fn load(
        dir: &Path,
        task: Task,
        labels: usize,
        lora: &LoraConfig,
        seed: u64,
        options: &LoadOptions,
    ) -> Result<Self> {
        Self::load_with(dir, task, labels, Some((lora, seed)), options)
    }

    /// Loads the model in `dir` for inference: with the PEFT adapter (and head) in `adapter`,
    /// or as the base model alone (a causal LM; a token classifier needs its trained head).
    pub fn load_for_inference(
        dir: &Path,
        task: Task,
        labels: usize,
        adapter: Option<&Path>,
        options: &LoadOptions,
    ) -> Result<Self> {
        let Some(adapter) = adapter else {
            if task == Task::TokenClassification {
                return Err(QloraError::Config(
                    "a token classifier needs an adapter with its trained head".into(),
                ));
            }
            return Self::load_with(dir, task, labels, None, options);
        };
        let lora = read_adapter_config(adapter)?;
        let mut model = Self::load_with(dir, task, labels, Some((&lora, 0)), options)?;
        model.load_adapter(adapter)?;
        Ok(model)
    }

    fn load_with(
        dir: &Path,
        task: Task,
        labels: usize,
        lora: Option<(&LoraConfig, u64)>,
        options: &LoadOptions,
    ) -> Result<Self> {
        let seed = lora.map_or(0, |(_, seed)| seed);
        if is_gguf(dir) {
            let decoder = LlamaDecoder::load_gguf(GgufFile::open(dir)?, options)?;
            return Self::decoder(decoder, task, labels, lora);
        }
        let kind: ModelType = read_config(dir)?;
        let kind = kind.model_type.unwrap_or_default();
        let unsupported = |what: &str| QloraError::Model {
            path: dir.join("config.json"),
            message: what.to_string(),
        };
        match (kind.as_str(), task) {
            ("bert", Task::TokenClassification) => {
                let mut encoder = BertEncoder::load(dir, options)?;
                if let Some((lora, seed)) = lora {
                    encoder.attach_lora(lora, seed)?;
                }
                let hidden = encoder.config().hidden_size;
                let head = Head::new(labels, hidden, seed, &options.device)?;
                Ok(AutoModel::BertTokens(BertTokenClassifier { encoder, head }))
            }
            ("bert", Task::CausalLm) => Err(unsupported("a BERT encoder is not a causal LM")),
            ("llama" | "mistral", task) => {
                Self::decoder(LlamaDecoder::load(dir, options)?, task, labels, lora)
            }
            (other, _) => Err(unsupported(&format!(
                "model_type `{other}` is not supported (bert, llama, mistral)"
            ))),
        }
    }

    /// A decoder model for `task`, with fresh adapters per `lora`.
    fn decoder(
        mut decoder: LlamaDecoder,
        task: Task,
        labels: usize,
        lora: Option<(&LoraConfig, u64)>,
    ) -> Result<Self> {
        let seed = lora.map_or(0, |(_, seed)| seed);
        if let Some((lora, seed)) = lora {
            decoder.attach_lora(lora, seed)?;
        }
        Ok(match task {
            Task::TokenClassification => {
                let head = decoder.new_head(labels, seed)?;
                AutoModel::DecoderTokens(DecoderTokenClassifier { decoder, head })
            }
            Task::CausalLm => AutoModel::DecoderLm(CausalLm { decoder }),
        })
    }

    fn parts(&self) -> Parts<'_> {
        match self {
            AutoModel::BertTokens(m) => Parts {
                linears: Box::new(m.encoder.linears()),
                module_prefix: "bert.",
                head: Some(("classifier", &m.head)),
                task: PeftTask::TokenClassification,
            },
            AutoModel::DecoderTokens(m) => Parts {
                linears: Box::new(m.decoder.linears()),
                module_prefix: "",
                head: Some(("score", &m.head)),
                task: PeftTask::TokenClassification,
            },
            AutoModel::DecoderLm(m) => Parts {
                linears: Box::new(m.decoder.linears()),
                module_prefix: "",
                head: None,
                task: PeftTask::CausalLm,
            },
        }
    }

    /// Saves the adapters (and head) in PEFT's format into `dir`.
    pub fn save_adapter(&self, dir: &Path, lora: &LoraConfig, base_model: &str) -> Result<()> {
        let parts = self.parts();
        let spec = AdapterSpec {
            lora,
            task: parts.task,
            base_model: base_model.to_string(),
            module_prefix: parts.module_prefix,
            head: parts.head,
        };
        save_adapter(dir, parts.linears, &spec)
    }

    /// Loads a PEFT adapter (and head) saved by [`AutoModel::save_adapter`].
    pub fn load_adapter(&mut self, dir: &Path) -> Result<LoraConfig> {
        match self {
            AutoModel::BertTokens(m) => load_adapter(
                dir,
                m.encoder.linears_mut(),
                "bert.",
                Some(("classifier", &mut m.head)),
            ),
            AutoModel::DecoderTokens(m) => load_adapter(
                dir,
                m.decoder.linears_mut(),
                "",
                Some(("score", &mut m.head)),
            ),
            AutoModel::DecoderLm(m) => load_adapter(dir, m.decoder.linears_mut(), "", None),
        }
    }

    /// Token-classification logits (batch × length × labels), or next-token logits for a
    /// causal LM.
    pub fn logits(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        pass: Pass,
    ) -> Result<Tensor> {
        match self {
            AutoModel::BertTokens(m) => m.forward(input_ids, attention_mask, pass),
            AutoModel::DecoderTokens(m) => m.forward(input_ids, attention_mask, pass),
            AutoModel::DecoderLm(m) => m.logits(input_ids, attention_mask, pass),
        }
    }

    /// Greedy continuations of `prompts` (a causal LM only); see [`generate_greedy`].
    pub fn generate(
        &self,
        prompts: &[&[u32]],
        options: &GenerateOptions,
        pass: Pass,
        device: &Device,
    ) -> Result<Vec<Generation>> {
        match self {
            AutoModel::DecoderLm(m) => generate_greedy(&m.decoder, prompts, options, pass, device),
            _ => Err(QloraError::Config(
                "generation needs a causal LM (task = \"causal_lm\")".into(),
            )),
        }
    }

    /// Storage bits per parameter of the quantised base weights, counted from the tensors
    /// (None when the base is not quantised).
    pub fn base_bits_per_parameter(&self) -> Option<f64> {
        let (mut bits, mut params) = (0f64, 0usize);
        for linear in self.parts().linears {
            if let crate::lora::FrozenWeight::Nf4(q) = linear.base() {
                bits += q.bits_per_parameter() * q.elem_count() as f64;
                params += q.elem_count();
            }
        }
        (params > 0).then(|| bits / params as f64)
    }
}

impl TrainModel for AutoModel {
    fn trainable(&self) -> Vec<(String, Var)> {
        match self {
            AutoModel::BertTokens(m) => m.trainable(),
            AutoModel::DecoderTokens(m) => m.trainable(),
            AutoModel::DecoderLm(m) => m.trainable(),
        }
    }

    fn loss(&self, batch: &TrainBatch, pass: Pass) -> Result<(Tensor, usize)> {
        match self {
            AutoModel::BertTokens(m) => m.loss(batch, pass),
            AutoModel::DecoderTokens(m) => m.loss(batch, pass),
            AutoModel::DecoderLm(m) => m.loss(batch, pass),
        }
    }
}
