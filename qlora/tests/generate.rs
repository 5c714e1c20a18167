//! Batched greedy generation on a tiny random Llama: the cached, batched path against the
//! plain definition (the whole sequence re-run each step, one row at a time).

use candle_core::{DType, Device, IndexOp, Tensor, D};
use medtune_qlora::bert::LoadOptions;
use medtune_qlora::generate::{generate_greedy, GenerateOptions, StopReason};
use medtune_qlora::llama::LlamaDecoder;
use medtune_qlora::{LoraConfig, Pass};

mod common;
use common::{seeded_randn, tiny_decoder};

fn decoder(dir: &std::path::Path, quantise: bool) -> LlamaDecoder {
    tiny_decoder(dir, serde_json::json!({"model_type": "llama"}), false);
    let options = LoadOptions {
        quantise,
        ..LoadOptions::qlora_cpu()
    };
    let mut model = LlamaDecoder::load(dir, &options).unwrap();
    let lora = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        use_rslora: false,
        target_modules: ["q_proj", "v_proj", "o_proj", "down_proj"]
            .map(String::from)
            .to_vec(),
    };
    model.attach_lora(&lora, 3).unwrap();
    // Non-zero B matrices, so the adapters change the outputs.
    for linear in model.linears() {
        let Some(adapter) = linear.adapter() else {
            continue;
        };
        let b = seeded_randn(4, linear.path(), adapter.b.shape(), 0.5);
        adapter.b.set(&b).unwrap();
    }
    model
}

/// Greedy decoding by definition: the full sequence through the model each step, no cache.
fn greedy_by_definition(
    model: &LlamaDecoder,
    prompt: &[u32],
    options: &GenerateOptions,
    pass: Pass,
) -> (Vec<u32>, StopReason) {
    let mut seq = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < options.max_new_tokens {
        let ids = Tensor::new(seq.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mask = ids.ones_like().unwrap().to_dtype(DType::U32).unwrap();
        let h = model.forward_hidden(&ids, &mask, None, pass).unwrap();
        let logits = model.lm_logits(&h).unwrap().i((0, seq.len() - 1)).unwrap();
        let next = logits
            .argmax(D::Minus1)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        if options.eos_ids.contains(&next) {
            return (out, StopReason::Eos);
        }
        out.push(next);
        seq.push(next);
    }
    (out, StopReason::Length)
}

fn prompts() -> Vec<Vec<u32>> {
    // Mixed lengths, 1 to 23 ids.
    (0..9u32)
        .map(|i| {
            (0..(1 + (i * 7) % 23))
                .map(|j| 3 + (i * 31 + j * 17) % 90)
                .collect()
        })
        .collect()
}

#[test]
fn batched_cached_generation_equals_one_row_at_a_time_without_a_cache() {
    let dir = tempfile::tempdir().unwrap();
    for quantise in [false, true] {
        let model = decoder(dir.path(), quantise);
        let prompts = prompts();
        let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        for pass in [
            Pass::EVAL,
            Pass {
                adapters: false,
                ..Pass::EVAL
            },
        ] {
            // Without an EOS every row runs to the limit; with the most frequent first output
            // as EOS, rows stop at different steps and leave the batch.
            let mut options = GenerateOptions {
                max_new_tokens: 12,
                eos_ids: vec![],
                pad_id: 0,
            };
            let free = generate_greedy(&model, &refs, &options, pass, &Device::Cpu).unwrap();
            let mut counts = std::collections::HashMap::new();
            for g in &free {
                assert_eq!(g.tokens.len(), 12);
                assert_eq!(g.stop, StopReason::Length);
                for &t in &g.tokens[..4] {
                    *counts.entry(t).or_insert(0) += 1;
                }
            }
            let eos = *counts.iter().max_by_key(|(_, &c)| c).unwrap().0;
            options.eos_ids = vec![eos];
            let batched = generate_greedy(&model, &refs, &options, pass, &Device::Cpu).unwrap();
            let stops: Vec<usize> = batched.iter().map(|g| g.tokens.len()).collect();
            assert!(
                batched.iter().any(|g| g.stop == StopReason::Eos)
                    && stops.iter().any(|&n| n != stops[0]),
                "rows should stop at different steps: {stops:?}"
            );
            for (prompt, got) in prompts.iter().zip(&batched) {
                let alone =
                    generate_greedy(&model, &[prompt.as_slice()], &options, pass, &Device::Cpu)
                        .unwrap();
                assert_eq!(&alone[0], got, "batch of one vs batch of nine");
                let (tokens, stop) = greedy_by_definition(&model, prompt, &options, pass);
                assert_eq!(tokens, got.tokens, "cache vs no cache, prompt {prompt:?}");
                assert_eq!(stop, got.stop);
            }
        }
    }
}

#[test]
fn adapters_on_and_off_generate_differently_and_limits_hold() {
    let dir = tempfile::tempdir().unwrap();
    let model = decoder(dir.path(), true);
    let prompts = prompts();
    let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let options = GenerateOptions {
        max_new_tokens: 6,
        eos_ids: vec![],
        pad_id: 0,
    };
    let on = generate_greedy(&model, &refs, &options, Pass::EVAL, &Device::Cpu).unwrap();
    let off = Pass {
        adapters: false,
        ..Pass::EVAL
    };
    let base = generate_greedy(&model, &refs, &options, off, &Device::Cpu).unwrap();
    assert_ne!(on, base);
    let none = GenerateOptions {
        max_new_tokens: 0,
        ..options.clone()
    };
    let empty = generate_greedy(&model, &refs, &none, Pass::EVAL, &Device::Cpu).unwrap();
    assert!(empty.iter().all(|g| g.tokens.is_empty()));
    let err = generate_greedy(&model, &[&[]], &options, Pass::EVAL, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    // The model has 128 positions: a 125-token prompt has room for 3 tokens, a 128-token one
    // for none, a 129-token one is an error.
    let long: Vec<u32> = (0..129).map(|i| 3 + i % 90).collect();
    let out = generate_greedy(
        &model,
        &[&long[..125], &long[..128], &long[..4]],
        &options,
        Pass::EVAL,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!((out[0].tokens.len(), out[0].stop), (3, StopReason::Context));
    assert_eq!((out[1].tokens.len(), out[1].stop), (0, StopReason::Context));
    assert_eq!((out[2].tokens.len(), out[2].stop), (6, StopReason::Length));
    let alone =
        generate_greedy(&model, &[&long[..125]], &options, Pass::EVAL, &Device::Cpu).unwrap();
    assert_eq!(alone[0], out[0]);
    let err = generate_greedy(&model, &[&long], &options, Pass::EVAL, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("longer than"), "{err}");
}
