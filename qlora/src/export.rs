//! Adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Key names follow what PEFT writes (and reads back with `PeftModel.from_pretrained`):
//!
//! | here                                   | PEFT key                                                       |
//! |----------------------------------------|----------------------------------------------------------------|
//! | BERT `encoder.layer.0.attention.self.query` A | `base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight` |
//! | Llama `model.layers.0.self_attn.q_proj` B | `base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight` |
//! | token head `classifier` / `score`      | `base_model.model.classifier.weight` / `.bias` (`modules_to_save`) |
//!
//! The adapter name (`default`) is not part of the keys, as PEFT strips it on save. BERT paths
//! get the `bert.` prefix that `BertForTokenClassification` puts before the encoder.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::bert::Head;
use crate::error::{QloraError, Result};
use crate::fsutil::write_dir_atomically;
use crate::lora::{LoraConfig, LoraLinear};

/// File of the adapter's tensors.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// File of the adapter's config.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
const PREFIX: &str = "base_model.model.";

/// What the adapted model is for (PEFT's `task_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeftTask {
    /// `TOKEN_CLS`.
    TokenClassification,
    /// `CAUSAL_LM`.
    CausalLm,
}

impl PeftTask {
    fn name(self) -> &'static str {
        match self {
            PeftTask::TokenClassification => "TOKEN_CLS",
            PeftTask::CausalLm => "CAUSAL_LM",
        }
    }
}

/// Where the adapter goes and what it is for.
pub struct AdapterSpec<'a> {
    /// LoRA hyper-parameters.
    pub lora: &'a LoraConfig,
    /// PEFT task type.
    pub task: PeftTask,
    /// `base_model_name_or_path`.
    pub base_model: String,
    /// What the transformers model class puts before our module paths (`bert.` for BERT).
    pub module_prefix: &'a str,
    /// A fully trained head: its module name and weights.
    pub head: Option<(&'a str, &'a Head)>,
}

/// Saves the adapters of `linears` (and the head) into `dir`, replacing what was there.
pub fn save_adapter<'a>(
    dir: &Path,
    linears: impl Iterator<Item = &'a LoraLinear>,
    spec: &AdapterSpec<'_>,
) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for linear in linears {
        let Some(adapter) = linear.adapter() else {
            continue;
        };
        let key = |m: &str| format!("{PREFIX}{}{}.{m}.weight", spec.module_prefix, linear.path());
        let cpu = |t: &Tensor| t.to_device(&Device::Cpu)?.to_dtype(DType::F32);
        tensors.insert(key("lora_A"), cpu(adapter.a.as_tensor())?);
        tensors.insert(key("lora_B"), cpu(adapter.b.as_tensor())?);
    }
    if tensors.is_empty() {
        return Err(QloraError::Config(
            "the model has no adapters to save".into(),
        ));
    }
    let mut modules_to_save = Vec::new();
    if let Some((name, head)) = spec.head {
        for (part, var) in [("weight", &head.weight), ("bias", &head.bias)] {
            let t = var
                .as_tensor()
                .to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?;
            tensors.insert(format!("{PREFIX}{name}.{part}"), t);
        }
        modules_to_save.push(name.to_string());
    }
    let lora = spec.lora;
    let config = json!({
        "peft_type": "LORA",
        "task_type": spec.task.name(),
        "base_model_name_or_path": spec.base_model,
        "r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "use_rslora": lora.use_rslora,
        "target_modules": lora.target_modules,
        "modules_to_save": if modules_to_save.is_empty() { serde_json::Value::Null } else { json!(modules_to_save) },
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": false,
        "revision": null,
    });
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| QloraError::file(parent, e))?;
    write_dir_atomically(dir, |tmp| {
        candle_core::safetensors::save(&tensors, tmp.join(ADAPTER_WEIGHTS))?;
        let text = serde_json::to_vec_pretty(&config).expect("config serialises");
        std::fs::write(tmp.join(ADAPTER_CONFIG), text).map_err(|e| QloraError::file(tmp, e))
    })
}

/// The LoRA hyper-parameters of the PEFT adapter in `dir` (its `adapter_config.json`).
pub fn read_adapter_config(dir: &Path) -> Result<LoraConfig> {
    let config_path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read(&config_path).map_err(|e| QloraError::file(&config_path, e))?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| QloraError::file(&config_path, e))?;
    let field = |k: &str| {
        value
            .get(k)
            .cloned()
            .ok_or_else(|| QloraError::file(&config_path, format!("no `{k}`")))
    };
    Ok(LoraConfig {
        r: field("r")?.as_u64().unwrap_or(0) as usize,
        alpha: field("lora_alpha")?.as_f64().unwrap_or(0.0),
        dropout: field("lora_dropout")?.as_f64().unwrap_or(0.0),
        use_rslora: value
            .get("use_rslora")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        target_modules: serde_json::from_value(field("target_modules")?)
            .map_err(|e| QloraError::file(&config_path, e))?,
    })
}

/// Loads a PEFT adapter from `dir` onto `linears` (and the head), checking that every saved
/// tensor lands somewhere and has the right shape. Returns its LoRA config.
pub fn load_adapter<'a>(
    dir: &Path,
    linears: impl Iterator<Item = &'a mut LoraLinear>,
    module_prefix: &str,
    head: Option<(&str, &mut Head)>,
) -> Result<LoraConfig> {
    let lora = read_adapter_config(dir)?;
    let weights_path = dir.join(ADAPTER_WEIGHTS);
    let mut tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu)?;
    for linear in linears {
        let key = |m: &str| format!("{PREFIX}{module_prefix}{}.{m}.weight", linear.path());
        match (
            tensors.remove(&key("lora_A")),
            tensors.remove(&key("lora_B")),
        ) {
            (Some(a), Some(b)) => {
                linear.set_adapter(a, b, lora.scale(), lora.dropout)?;
            }
            (None, None) => {}
            _ => {
                return Err(QloraError::file(
                    &weights_path,
                    format!("`{}` has only one of lora_A and lora_B", linear.path()),
                ))
            }
        }
    }
    if let Some((name, head)) = head {
        for (part, var) in [("weight", &head.weight), ("bias", &head.bias)] {
            let key = format!("{PREFIX}{name}.{part}");
            let t = tensors
                .remove(&key)
                .ok_or_else(|| QloraError::file(&weights_path, format!("no `{key}`")))?;
            if t.dims() != var.dims() {
                return Err(QloraError::Shape {
                    name: key,
                    expected: var.dims().to_vec(),
                    actual: t.dims().to_vec(),
                });
            }
            var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
        }
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(QloraError::file(
            &weights_path,
            format!("`{extra}` matches no module of this model"),
        ));
    }
    Ok(lora)
}
