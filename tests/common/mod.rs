//! Helpers for tests that drive the `medtune` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shared real data folder (`../shared/data` beside the repository).
pub fn shared_data(rel: &str) -> PathBuf {
    let path = repo().join("../shared/data").join(rel);
    assert!(
        path.exists(),
        "real data file {} is missing",
        path.display()
    );
    path
}

/// A bundled config's text with its relative paths made absolute, so it runs from any folder.
pub fn bundled_config(name: &str) -> String {
    let configs = repo().join("configs");
    std::fs::read_to_string(configs.join(name))
        .unwrap()
        .replace("\"../", &format!("\"{}/../", configs.display()))
}

/// One medtune invocation's result.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Self {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless the exit code is `code`.
    pub fn expect(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "exit code {} (wanted {code})\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// Runs `medtune --workdir <workdir> ARGS...`.
pub fn medtune(workdir: &Path, args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_medtune"))
        .arg("--workdir")
        .arg(workdir)
        .args(args)
        .output()
        .expect("medtune runs");
    Run::from(output)
}

/// Runs a query and returns its CSV output.
pub fn query_csv(workdir: &Path, sql: &str) -> String {
    medtune(workdir, &["query", sql, "--format", "csv"])
        .expect(0)
        .stdout
}

/// Rows of a query as JSON objects (`medtune query --format json`).
pub fn query_rows(workdir: &Path, sql: &str) -> Vec<serde_json::Value> {
    let run = medtune(workdir, &["query", sql, "--format", "json"]).expect(0);
    serde_json::from_str(&run.stdout).unwrap()
}

/// Writes a config with an `[ingest]` section reading `inputs` (absolute paths) as `format`,
/// plus any extra TOML, and returns its path.
pub fn write_config(dir: &Path, format: &str, inputs: &[PathBuf], extra: &str) -> PathBuf {
    let list: Vec<String> = inputs
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    let text = format!(
        "[ingest]\nformat = \"{format}\"\ninputs = [{}]\n{extra}\n",
        list.join(", ")
    );
    let path = dir.join(format!("{format}-{}.toml", inputs.len()));
    std::fs::write(&path, text).unwrap();
    path
}

/// A bad-input fixture from `data/bad`.
pub fn fixture(name: &str) -> PathBuf {
    repo().join("data/bad").join(name)
}

/// Writes a JSON array of `rows` alpaca records in HealthCareMagic's shape, generated from
/// chatdoctor5k.json, and returns its path. HealthCareMagic-100k holds 112,165 rows in ~140 MB
/// (~1.25 KB a row, over twice a chatdoctor5k row), so each generated row joins the input and
/// the output of three source rows; its input ends with the row number, so no two rows repeat.
pub fn big_alpaca(dir: &Path, rows: usize) -> PathBuf {
    let source: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(shared_data("chatdoctor/chatdoctor5k.json")).unwrap(),
    )
    .unwrap();
    let n = source.len();
    let text = |i: usize, field: &str| source[i % n][field].as_str().unwrap_or("").to_string();
    let path = dir.join(format!("alpaca-{rows}.json"));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    use std::io::Write;
    out.write_all(b"[\n").unwrap();
    for i in 0..rows {
        let (j, k) = (i.wrapping_mul(7919) + 3, i.wrapping_mul(104_729) + 11);
        let joined =
            |field: &str| format!("{} {} {}", text(i, field), text(j, field), text(k, field));
        let row = serde_json::json!({
            "instruction": text(i, "instruction"),
            "input": format!("{} (#{i})", joined("input")),
            "output": joined("output"),
        });
        if i > 0 {
            out.write_all(b",\n").unwrap();
        }
        serde_json::to_writer_pretty(&mut out, &row).unwrap();
    }
    out.write_all(b"\n]\n").unwrap();
    out.flush().unwrap();
    path
}

/// A tiny random Llama with `vocab` ids: config.json + model.safetensors in `dir`.
pub fn tiny_llama(dir: &Path, vocab: usize) {
    let (h, inter, layers, heads, kv) = (32, 64, 2, 4, 2);
    let d = h / heads;
    let dev = candle_core::Device::Cpu;
    let mut t: std::collections::HashMap<String, candle_core::Tensor> =
        std::collections::HashMap::new();
    // Seeded weights (a 64-bit LCG, uniform in [-1, 1) times `scale`): the same model on every
    // run, so whether its loss falls does not depend on the draw.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut put = |name: String, shape: &[usize], scale: f64, offset: f64| {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
                ((unit * 2.0 - 1.0) * scale * 1.7 + offset) as f32
            })
            .collect();
        t.insert(
            name,
            candle_core::Tensor::from_vec(values, shape, &dev).unwrap(),
        );
    };
    put("model.embed_tokens.weight".into(), &[vocab, h], 0.5, 0.0);
    put("model.norm.weight".into(), &[h], 0.1, 1.0);
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (name, out, inp) in [
            ("self_attn.q_proj", heads * d, h),
            ("self_attn.k_proj", kv * d, h),
            ("self_attn.v_proj", kv * d, h),
            ("self_attn.o_proj", h, heads * d),
            ("mlp.gate_proj", inter, h),
            ("mlp.up_proj", inter, h),
            ("mlp.down_proj", h, inter),
        ] {
            put(format!("{p}.{name}.weight"), &[out, inp], 0.1, 0.0);
        }
        put(format!("{p}.input_layernorm.weight"), &[h], 0.1, 1.0);
        put(
            format!("{p}.post_attention_layernorm.weight"),
            &[h],
            0.1,
            1.0,
        );
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "model_type": "llama", "vocab_size": vocab, "hidden_size": h, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 512,
        "tie_word_embeddings": true,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// The Python the parity tests run (`MEDTUNE_PYTHON`, which `scripts/test.sh` sets to the venv
/// `scripts/python-env.sh` makes). Panics when it is unset: a parity test never passes by
/// skipping its comparison.
pub fn python() -> PathBuf {
    match std::env::var_os("MEDTUNE_PYTHON") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => panic!(
            "MEDTUNE_PYTHON is not set: run scripts/test.sh (it makes the venv with \
             scripts/python-env.sh), or export MEDTUNE_PYTHON=\"$(scripts/python-env.sh)\" \
             before cargo test"
        ),
    }
}

/// Runs `bench/<script>` with `arg` under the test Python ([`python`]) and parses its stdout as
/// JSON; panics with its stderr if it fails.
pub fn python_json(script: &str, arg: &Path) -> serde_json::Value {
    let out = Command::new(python())
        .arg(repo().join("bench").join(script))
        .arg(arg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
