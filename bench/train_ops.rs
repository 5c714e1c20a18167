//! Benchmark: where a training step's time goes, op by op. Each fused op of `medtune_qlora::ops`
//! and the candle composition it replaced run forward + backward on the shapes of one layer of
//! a real batch, in this one process; prints the best of REPS runs of each and the ratio.
//!
//! Shapes: all-MiniLM-L6-v2 on BC5CDR at `max_tokens = 2048` (50 rows × 41 tokens, hidden 384,
//! 12 heads, feed-forward 1536, LoRA r = 16 with dropout 0.1), and SmolLM2-135M's vocabulary head
//! (49,152 tokens × 576) over 512 labelled positions.
//!
//! cargo run --release --example train_ops_bench [-- REPS]

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use medtune_qlora::ops;
use medtune_qlora::rng::stream;

fn randn(shape: &[usize], std: f64) -> Tensor {
    Tensor::randn(0f32, std as f32, shape, &Device::Cpu).expect("randn")
}

/// The best wall time of `reps` forward + backward passes of `f` over variables `inputs`.
fn time(reps: usize, inputs: &[Var], f: &dyn Fn(&[Tensor]) -> Tensor) -> f64 {
    let args: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let weights = f(&args).ones_like().expect("ones");
    (0..reps)
        .map(|_| {
            let start = Instant::now();
            let y = f(&args);
            let grads = (&y * &weights)
                .and_then(|l| l.sum_all())
                .and_then(|l| l.backward())
                .expect("backward");
            drop(grads);
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// LoRA operands (x, A, B) as the fused and composed layers take them.
fn adapted<'a>(t: &'a [Tensor], dropout: &'a ops::Dropout) -> ops::Adapted<'a> {
    ops::Adapted {
        a: &t[1],
        b: &t[2],
        scale: 2.0,
        dropout: Some(dropout),
    }
}

fn main() {
    medtune_qlora::allocator::keep_freed_memory();
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let (rows, len, hidden, heads, inner, r) = (50, 41, 384, 12, 1536, 16);
    let d = hidden / heads;
    let var = |shape: &[usize]| Var::from_tensor(&randn(shape, 1.0)).expect("var");
    let x = var(&[rows, len, hidden]);
    let wide = var(&[rows, len, inner]);
    let (w_in, w_out) = (randn(&[inner, hidden], 0.05), randn(&[hidden, inner], 0.05));
    let (a, b) = (var(&[r, hidden]), var(&[inner, r]));
    let bias = randn(&[inner], 0.1);
    let dropout = ops::Dropout {
        p: 0.1,
        rng: stream(1, 1, "dropout", "bench"),
    };
    let (q, k, v) = (
        var(&[rows, heads, len, d]),
        var(&[rows, heads, len, d]),
        var(&[rows, heads, len, d]),
    );
    let mask = Tensor::zeros((rows, 1, 1, len), DType::F32, &Device::Cpu).expect("mask");
    let (norm_w, norm_b) = (randn(&[hidden], 1.0), randn(&[hidden], 0.1));
    let (vocab, labelled, lm_hidden) = (49_152, 512, 576);
    let logits = var(&[labelled, vocab]);
    let targets = Tensor::from_vec(
        (0..labelled as u32)
            .map(|i| i * 97 % vocab as u32)
            .collect::<Vec<_>>(),
        labelled,
        &Device::Cpu,
    )
    .expect("targets");
    let embedding = randn(&[vocab, lm_hidden], 0.05);
    let lm_in = var(&[labelled, lm_hidden]);

    type Op<'a> = Box<dyn Fn(&[Tensor]) -> Tensor + 'a>;
    let cases: Vec<(&str, Vec<Var>, Op, Op)> = vec![
        (
            "frozen linear 384 → 1536",
            vec![x.clone()],
            Box::new(|t| ops::frozen_linear(&t[0], &w_in).unwrap()),
            Box::new(|t| t[0].broadcast_matmul(&w_in.t().unwrap()).unwrap()),
        ),
        (
            "frozen linear 1536 → 384",
            vec![wide.clone()],
            Box::new(|t| ops::frozen_linear(&t[0], &w_out).unwrap()),
            Box::new(|t| t[0].broadcast_matmul(&w_out.t().unwrap()).unwrap()),
        ),
        (
            "LoRA linear 384 → 1536, r 16, dropout",
            vec![x.clone(), a.clone(), b.clone()],
            Box::new(|t| {
                ops::lora_linear(&t[0], &w_in, Some(&bias), adapted(t, &dropout)).unwrap()
            }),
            Box::new(|t| {
                ops::composed_lora_linear(&t[0], &w_in, Some(&bias), adapted(t, &dropout)).unwrap()
            }),
        ),
        (
            "attention 50 × 12 heads × 41 tokens × 32",
            vec![q.clone(), k.clone(), v.clone()],
            Box::new(|t| ops::attention(&t[0], &t[1], &t[2], &mask, 0.17).unwrap()),
            Box::new(|t| ops::composed_attention(&t[0], &t[1], &t[2], &mask, 0.17).unwrap()),
        ),
        (
            "LayerNorm 2050 × 384",
            vec![x.clone()],
            Box::new(|t| ops::layer_norm(&t[0], &norm_w, &norm_b, 1e-12).unwrap()),
            Box::new(|t| ops::composed_layer_norm(&t[0], &norm_w, &norm_b, 1e-12).unwrap()),
        ),
        (
            "GELU 2050 × 1536",
            vec![wide.clone()],
            Box::new(|t| ops::gelu_erf(&t[0]).unwrap()),
            Box::new(|t| ops::composed_gelu_erf(&t[0]).unwrap()),
        ),
        (
            "LM head 512 × 576 → 49,152",
            vec![lm_in.clone()],
            Box::new(|t| ops::frozen_linear(&t[0], &embedding).unwrap()),
            Box::new(|t| t[0].broadcast_matmul(&embedding.t().unwrap()).unwrap()),
        ),
        (
            "cross-entropy 512 × 49,152",
            vec![logits.clone()],
            Box::new(|t| ops::cross_entropy(&t[0], &targets).unwrap()),
            Box::new(|t| ops::composed_cross_entropy(&t[0], &targets).unwrap()),
        ),
    ];
    println!(
        "forward + backward, best of {reps}, {} threads",
        candle_core::utils::get_num_threads()
    );
    println!("| op | fused ms | composed ms | composed / fused |");
    println!("|---|---|---|---|");
    for (name, inputs, fused, composed) in &cases {
        let (f, c) = (time(reps, inputs, fused), time(reps, inputs, composed));
        println!(
            "| {name} | {:.2} | {:.2} | {:.2}× |",
            f * 1e3,
            c * 1e3,
            c / f
        );
    }
}
