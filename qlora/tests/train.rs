//! The trainer on a tiny random Llama with NF4 weights: the loss falls, a run resumed from a
//! checkpoint reproduces the uninterrupted run's losses exactly, and a saved PEFT adapter loads
//! back to the same logits.

mod common;

use candle_core::{Device, IndexOp, Tensor};
use common::{max_abs_diff, tiny_decoder};
use medtune_qlora::bert::LoadOptions;
use medtune_qlora::export::{load_adapter, save_adapter, AdapterSpec, PeftTask};
use medtune_qlora::llama::{LlamaDecoder, LLAMA_TARGETS};
use medtune_qlora::tasks::{masked_cross_entropy, CausalLm};
use medtune_qlora::train::{BatchSource, ScheduleConfig, TrainBatch, TrainModel, Trainer};
use medtune_qlora::{LoraConfig, Pass, QloraError, Result};

/// A fixed little corpus: "prompt" tokens masked, a completion that repeats a pattern the
/// model can learn; batches of 4 rows, right-padded.
struct Corpus {
    batches: Vec<TrainBatch>,
}

impl Corpus {
    fn new(rows: usize) -> Self {
        let mut batches = Vec::new();
        let dev = Device::Cpu;
        for chunk in (0..rows).collect::<Vec<_>>().chunks(4) {
            let seq = 12;
            let (mut ids, mut labels, mut mask) = (vec![], vec![], vec![]);
            for &r in chunk {
                let len = 8 + r % 4;
                for t in 0..seq {
                    let token = if t < 3 {
                        10 + (r % 5) as u32
                    } else {
                        20 + ((t + r) % 3) as u32
                    };
                    let real = t < len;
                    ids.push(if real { token } else { 0 });
                    mask.push(u32::from(real));
                    labels.push(if real && t >= 3 {
                        i64::from(token)
                    } else {
                        -100
                    });
                }
            }
            let n = chunk.len();
            let labelled = labels.iter().filter(|&&l| l >= 0).count();
            batches.push(TrainBatch {
                input_ids: Tensor::from_vec(ids, (n, seq), &dev).unwrap(),
                attention_mask: Tensor::from_vec(mask.clone(), (n, seq), &dev).unwrap(),
                labels: Tensor::from_vec(labels, (n, seq), &dev).unwrap(),
                labelled,
                tokens: mask.iter().filter(|&&m| m == 1).count(),
            });
        }
        Corpus { batches }
    }
}

impl BatchSource for Corpus {
    fn batches(&self, epoch: u64, step: u64) -> Box<dyn Iterator<Item = Result<TrainBatch>> + '_> {
        // A different (deterministic) order per epoch.
        let n = self.batches.len();
        let order: Vec<usize> = (0..n).map(|i| (i * 5 + epoch as usize * 3) % n).collect();
        Box::new(
            order
                .into_iter()
                .skip(step as usize)
                .map(|i| Ok(self.batches[i].clone())),
        )
    }

    fn steps_in_epoch(&self, _epoch: u64) -> Result<u64> {
        Ok(self.batches.len() as u64)
    }
}

fn lora() -> LoraConfig {
    LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout: 0.1,
        use_rslora: false,
        target_modules: LLAMA_TARGETS.iter().map(|t| t.to_string()).collect(),
    }
}

fn config(checkpoint_every: u64) -> ScheduleConfig {
    serde_json::from_value(serde_json::json!({
        "epochs": 3, "learning_rate": 5e-3, "warmup_steps": 2, "grad_accum": 2,
        "seed": 11, "eval_every": 4, "checkpoint_every": checkpoint_every,
    }))
    .unwrap()
}

fn model(dir: &std::path::Path) -> CausalLm {
    let mut decoder = LlamaDecoder::load(dir, &LoadOptions::qlora_cpu()).unwrap();
    assert_eq!(decoder.attach_lora(&lora(), 3).unwrap(), 14);
    CausalLm { decoder }
}

#[test]
fn loss_falls_and_resume_reproduces_the_losses_exactly() {
    let dir = tempfile::tempdir().unwrap();
    tiny_decoder(dir.path(), serde_json::json!({}), false);
    let train = Corpus::new(28); // 7 batches: epochs end mid-accumulation
    let eval = Corpus::new(8);

    let full_out = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let mut trainer = Trainer::new(&m, &train, config(0), full_out.path()).unwrap();
    let full = trainer.run(&train, Some(&eval), &mut |_, _| {}).unwrap();
    assert_eq!(full.total_steps, 12, "3 epochs x ceil(7 / 2)");
    let losses: Vec<f64> = full.steps.iter().map(|s| s.loss).collect();
    let first: f64 = losses[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    println!(
        "tiny Llama SFT: loss {first:.3} -> {last:.3}; eval {:?}",
        full.evals
    );
    assert!(last < first * 0.7, "{losses:?}");
    assert!(full.evals.len() >= 3 && full.best.is_some());

    // Interrupted after step 5 (a checkpoint every 5 steps), then resumed by a new process's
    // worth of state: a fresh model, a fresh trainer on the same folder.
    let out = tempfile::tempdir().unwrap();
    let m1 = model(dir.path());
    let mut first_part = Trainer::new(&m1, &train, config(5), out.path()).unwrap();
    let mut steps_seen = 0;
    let _ = first_part.run(&train, Some(&eval), &mut |log, _| {
        steps_seen = log.step;
    });
    assert_eq!(steps_seen, 12);
    // Drop everything after the step-5 checkpoint, as if the run had died at step 7.
    for entry in std::fs::read_dir(out.path()).unwrap() {
        let path = entry.unwrap().path();
        if !path.ends_with("checkpoint-000005") {
            std::fs::remove_dir_all(path).unwrap();
        }
    }
    let m2 = model(dir.path());
    let mut resumed = Trainer::new(&m2, &train, config(5), out.path()).unwrap();
    assert_eq!(resumed.state().step, 5);
    let after = resumed.run(&train, Some(&eval), &mut |_, _| {}).unwrap();
    let resumed_losses: Vec<f64> = after.steps.iter().map(|s| s.loss).collect();
    assert_eq!(resumed_losses, losses, "resumed losses differ");
    assert_eq!(after.evals, full.evals);

    // The adapter round-trips through PEFT's format: same logits after loading.
    let ids = Tensor::new(&[[1u32, 11, 12, 20, 21, 22, 20]], &Device::Cpu).unwrap();
    let mask = ids.ones_like().unwrap();
    let before = m2.logits(&ids, &mask, Pass::EVAL).unwrap();
    let adapter_dir = out.path().join("adapter");
    let lora = lora();
    let spec = AdapterSpec {
        lora: &lora,
        task: PeftTask::CausalLm,
        base_model: "tiny-llama".into(),
        module_prefix: "",
        head: None,
    };
    save_adapter(&adapter_dir, m2.decoder.linears(), &spec).unwrap();
    let names: Vec<String> =
        candle_core::safetensors::load(adapter_dir.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_keys()
            .collect();
    assert!(
        names.contains(
            &"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".to_string()
        ),
        "{names:?}"
    );
    let mut fresh = LlamaDecoder::load(dir.path(), &LoadOptions::qlora_cpu()).unwrap();
    let loaded = load_adapter(&adapter_dir, fresh.linears_mut(), "", None).unwrap();
    assert_eq!(loaded, lora);
    let fresh = CausalLm { decoder: fresh };
    let again = fresh.logits(&ids, &mask, Pass::EVAL).unwrap();
    let diff = max_abs_diff(&before.i(0).unwrap(), &again.i(0).unwrap());
    assert_eq!(diff, 0.0);
    // Adapters off: the base model, which the trained adapter moved away from.
    let base = fresh
        .logits(
            &ids,
            &mask,
            Pass {
                adapters: false,
                dropout_key: None,
            },
        )
        .unwrap();
    assert!(
        (base - again)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 1e-3
    );
}

/// A step whose batches hold no labelled token has no loss: training stops naming the step
/// instead of logging NaN. A loss that blows up (here: a learning rate of 1e30) stops the run
/// at the first step whose loss or gradient is not finite, naming it.
#[test]
fn a_step_without_labels_or_with_a_non_finite_loss_stops_training_naming_the_step() {
    let dir = tempfile::tempdir().unwrap();
    tiny_decoder(dir.path(), serde_json::json!({}), false);
    let m = model(dir.path());

    let mut unlabelled = Corpus::new(8);
    for batch in &mut unlabelled.batches {
        batch.labels = (batch.labels.zeros_like().unwrap() - 100.0).unwrap();
        batch.labelled = 0;
    }
    let out = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::new(&m, &unlabelled, config(0), out.path()).unwrap();
    let err = trainer
        .run(&unlabelled, None, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("step 1:") && err.contains("no labelled token"),
        "{err}"
    );

    let train = Corpus::new(8);
    let mut exploding = config(0);
    exploding.learning_rate = 1e30;
    exploding.warmup_steps = 0;
    let out = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::new(&m, &train, exploding, out.path()).unwrap();
    let mut logged = Vec::new();
    let err = trainer
        .run(&train, None, &mut |log, _| logged.push(log.loss))
        .unwrap_err();
    let QloraError::NotFinite { step, .. } = &err else {
        panic!("wanted a not-finite error, got {err}");
    };
    println!("lr 1e30: {err} (after losses {logged:?})");
    assert_eq!(*step, logged.len() as u64 + 1, "{err}");
    assert!(logged.iter().all(|l| l.is_finite()), "{logged:?}");
    assert!(err.to_string().contains(&format!("step {step}:")), "{err}");
}

#[test]
fn the_causal_lm_loss_over_labelled_positions_equals_the_loss_over_all_logits() {
    // The loss runs the vocabulary head only where the next label counts; against the
    // cross-entropy of the full logits, shifted by hand, the value and every adapter gradient
    // must agree.
    let dir = tempfile::tempdir().unwrap();
    tiny_decoder(dir.path(), serde_json::json!({}), true);
    let model = model(dir.path());
    let batch = &Corpus::new(4).batches[0];
    let pass = Pass::train(11, 1);
    let (loss, n) = model.loss(batch, pass).unwrap();
    let logits = model
        .logits(&batch.input_ids, &batch.attention_mask, pass)
        .unwrap();
    let l = logits.dim(1).unwrap();
    let (full, m) = masked_cross_entropy(
        &logits.narrow(1, 0, l - 1).unwrap(),
        &batch.labels.narrow(1, 1, l - 1).unwrap(),
    )
    .unwrap();
    assert_eq!(n, m);
    assert!(n > 0 && n < batch.labels.elem_count());
    let (a, b): (f32, f32) = (loss.to_scalar().unwrap(), full.to_scalar().unwrap());
    assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
    let (grads, full_grads) = (loss.backward().unwrap(), full.backward().unwrap());
    for (name, var) in model.trainable() {
        let diff = max_abs_diff(
            grads.get(var.as_tensor()).unwrap(),
            full_grads.get(var.as_tensor()).unwrap(),
        );
        assert!(diff <= 1e-5, "{name}: gradients differ by {diff:e}");
    }
}
