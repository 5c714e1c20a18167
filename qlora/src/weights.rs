//! Reading a model's weights by their Hugging Face names: from a model directory's
//! `*.safetensors` (one file, or shards listed by `model.safetensors.index.json`) or from a GGUF
//! file ([`crate::gguf`]), every tensor checked against the shape the config implies.

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::de::DeserializeOwned;

use crate::error::{QloraError, Result};
use crate::gguf::{unpermute_rows, GgufFile, GgufNames};
use crate::llama::LlamaConfig;
use crate::lora::LoraLinear;

/// The `config.json` of `dir`, parsed as `T`.
pub fn read_config<T: DeserializeOwned>(dir: &Path) -> Result<T> {
    let path = dir.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| QloraError::Model {
        path: path.clone(),
        message: format!("cannot read the model config: {e}"),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| QloraError::Model {
        path,
        message: format!("not a model config this model reads: {e}"),
    })
}

/// Where the tensors are read from.
enum Source {
    /// A model directory's safetensors.
    Safetensors(MmapedSafetensors),
    /// A GGUF file, with the map from HF names to its names.
    Gguf(Box<GgufFile>, GgufNames),
}

/// The weights of a model (a directory's safetensors, or a GGUF file).
pub struct Weights {
    /// The directory or file, for errors.
    dir: PathBuf,
    source: Source,
    /// Prefix of every name in the files (e.g. `bert.` in a BertFor* checkpoint).
    prefix: String,
    device: Device,
    dtype: DType,
}

impl Weights {
    /// Opens the safetensors of `dir`, loading tensors to `device` as `dtype`.
    pub fn open(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let missing = |message: String| QloraError::Model {
            path: dir.to_path_buf(),
            message,
        };
        if !dir.is_dir() {
            return Err(missing("model directory not found".into()));
        }
        let index = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if index.is_file() {
            let text = std::fs::read(&index).map_err(|e| missing(e.to_string()))?;
            let value: serde_json::Value =
                serde_json::from_slice(&text).map_err(|e| QloraError::Model {
                    path: index.clone(),
                    message: format!("not a safetensors index: {e}"),
                })?;
            let map = value["weight_map"]
                .as_object()
                .ok_or_else(|| QloraError::Model {
                    path: index.clone(),
                    message: "no `weight_map`".into(),
                })?;
            let mut files: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            files.sort_unstable();
            files.dedup();
            files.into_iter().map(|f| dir.join(f)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        for path in &paths {
            if !path.is_file() {
                return Err(QloraError::Model {
                    path: path.clone(),
                    message: "weights file not found (a model directory needs \
                              model.safetensors or model.safetensors.index.json and its shards)"
                        .into(),
                });
            }
        }
        // SAFETY: the files are mapped read-only; the model directory is not modified while a
        // model is loaded from it.
        let files = unsafe { MmapedSafetensors::multi(&paths) }
            .map_err(|e| missing(format!("cannot read the safetensors: {e}")))?;
        Ok(Weights {
            dir: dir.to_path_buf(),
            source: Source::Safetensors(files),
            prefix: String::new(),
            device: device.clone(),
            dtype,
        })
    }

    /// The weights of a Llama-architecture GGUF file whose config is `config`, under their
    /// Hugging Face names, loaded to `device` as `dtype`.
    pub fn open_gguf(file: GgufFile, config: &LlamaConfig, device: &Device, dtype: DType) -> Self {
        Weights {
            dir: file.path().to_path_buf(),
            source: Source::Gguf(Box::new(file), GgufNames::new(config)),
            prefix: String::new(),
            device: device.clone(),
            dtype,
        }
    }

    /// Uses `prefix` for every name if the files name their tensors with it.
    pub fn with_prefix_if_present(mut self, prefix: &str, probe: &str) -> Self {
        if self.contains(&format!("{prefix}{probe}")) {
            self.prefix = prefix.to_string();
        }
        self
    }

    /// The device tensors load to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype tensors load as.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Whether the files hold `name`.
    pub fn contains(&self, name: &str) -> bool {
        let full = format!("{}{name}", self.prefix);
        match &self.source {
            Source::Safetensors(files) => files.get(&full).is_ok(),
            Source::Gguf(file, names) => names
                .gguf_name(&full)
                .is_some_and(|(gguf, _)| file.contains(&gguf)),
        }
    }

    /// The tensor `name`, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = format!("{}{name}", self.prefix);
        let missing = |what: String| QloraError::Model {
            path: self.dir.clone(),
            message: format!("the weights have no tensor `{what}`"),
        };
        let tensor = match &self.source {
            Source::Safetensors(files) => files
                .load(&full, &self.device)
                .map_err(|_| missing(full.clone()))?,
            Source::Gguf(file, names) => {
                let (gguf, heads) = names
                    .gguf_name(&full)
                    .filter(|(gguf, _)| file.contains(gguf))
                    .ok_or_else(|| missing(full.clone()))?;
                let tensor = file.tensor(&gguf, &self.device)?;
                match heads {
                    Some(heads) if tensor.dims() == shape => unpermute_rows(&tensor, heads)?,
                    _ => tensor,
                }
            }
        };
        if tensor.dims() != shape {
            return Err(QloraError::Shape {
                name: full,
                expected: shape.to_vec(),
                actual: tensor.dims().to_vec(),
            });
        }
        Ok(tensor.to_dtype(self.dtype)?)
    }
}

/// Whether a linear layer has a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bias {
    /// It must have one (BERT).
    Required,
    /// It has one if the weights hold it (Llama has none; Qwen-style checkpoints do).
    IfPresent,
}

/// The weights under one module path, as candle-nn's `VarBuilder::pp` scopes them: names are
/// joined with `.` onto the path, so a model names each tensor relative to its module.
#[derive(Clone)]
pub struct Scope<'w> {
    weights: &'w Weights,
    path: String,
}

impl Weights {
    /// The scope of the whole model (no path).
    pub fn root(&self) -> Scope<'_> {
        Scope {
            weights: self,
            path: String::new(),
        }
    }
}

impl<'w> Scope<'w> {
    /// The scope of the child module `name` (a layer index is a name too).
    pub fn pp(&self, name: impl std::fmt::Display) -> Scope<'w> {
        Scope {
            weights: self.weights,
            path: self.join(&name.to_string()),
        }
    }

    fn join(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// Whether the weights hold the tensor `name` of this module.
    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.join(name))
    }

    /// The tensor `name` of this module, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.weights.get(&self.join(name), shape)
    }

    /// This module as a linear layer from `inp` to `out` features (`weight` of shape
    /// `[out, inp]`, `bias` of `[out]`), quantised to NF4 when `quantise` is set.
    pub fn linear(&self, out: usize, inp: usize, bias: Bias, quantise: bool) -> Result<LoraLinear> {
        let weight = self.get("weight", &[out, inp])?;
        let bias = match bias {
            Bias::Required => Some(self.get("bias", &[out])?),
            Bias::IfPresent if self.contains("bias") => Some(self.get("bias", &[out])?),
            Bias::IfPresent => None,
        };
        LoraLinear::new(&self.path, weight, bias, quantise)
    }
}
