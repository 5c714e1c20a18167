//! AdamW over several steps against the definition computed here in f64 (Loshchilov & Hutter's
//! decoupled weight decay, as `torch.optim.AdamW` implements it): changing gradients, weight
//! decay, non-default betas, an eps large enough that where it is added matters, the cosine
//! schedule with warm-up, and a step where one parameter has no gradient.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use medtune_qlora::optim::{cosine_with_warmup, AdamW, AdamWConfig};

const BETA1: f64 = 0.8;
const BETA2: f64 = 0.95;
const EPS: f64 = 1e-3;
const WEIGHT_DECAY: f64 = 0.1;
const PEAK_LR: f64 = 0.05;
const WARMUP: u64 = 2;
const STEPS: u64 = 7;
/// The step (0-based) on which `b` gets no gradient.
const NO_GRAD_FOR_B: u64 = 3;

/// One parameter by the definition, in f64 (PyTorch's `_single_tensor_adamw`).
struct Reference {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    /// Updates this parameter has had (PyTorch's per-parameter `state["step"]`).
    t: i32,
}

impl Reference {
    fn new(p: &[f32]) -> Self {
        let n = p.len();
        Reference {
            p: p.iter().map(|&x| f64::from(x)).collect(),
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }

    fn step(&mut self, g: &[f32], lr: f64) {
        self.t += 1;
        let bias1 = 1.0 - BETA1.powi(self.t);
        let bias2 = 1.0 - BETA2.powi(self.t);
        for i in 0..self.p.len() {
            let g = f64::from(g[i]);
            self.p[i] *= 1.0 - lr * WEIGHT_DECAY;
            self.m[i] = BETA1 * self.m[i] + (1.0 - BETA1) * g;
            self.v[i] = BETA2 * self.v[i] + (1.0 - BETA2) * g * g;
            let m_hat = self.m[i] / bias1;
            let v_hat = self.v[i] / bias2;
            self.p[i] -= lr * m_hat / (v_hat.sqrt() + EPS);
        }
    }
}

/// transformers' `get_cosine_schedule_with_warmup` at `step` (0-based), written out.
fn schedule(step: u64) -> f64 {
    if step < WARMUP {
        PEAK_LR * step as f64 / WARMUP as f64
    } else {
        let progress = (step - WARMUP) as f64 / (STEPS - WARMUP) as f64;
        PEAK_LR * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// The gradient of parameter `which` (of `n` elements) at `step`: signs and magnitudes
/// (1e-3 to 1, so eps = 1e-3 matters for some elements) change from step to step.
fn gradient(which: usize, n: usize, step: u64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let phase = 1.3 * i as f64 + 0.7 * step as f64 + 2.1 * which as f64;
            let magnitude = 10f64.powf(-3.0 * ((i + step as usize) % 4) as f64 / 3.0);
            (phase.sin() * magnitude) as f32
        })
        .collect()
}

/// Largest relative difference of `got` from `want`.
fn max_relative(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs() / w.abs())
        .fold(0.0, f64::max)
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn adamw_follows_the_definition_over_several_steps() {
    let dev = Device::Cpu;
    // Values away from zero, so a relative tolerance is meaningful.
    let init: [Vec<f32>; 2] = [
        vec![1.0, -2.0, 0.75, -0.5, 1.5, -1.25],
        vec![0.6, -0.9, 2.5, -3.0],
    ];
    let names = ["w", "b"];
    let vars: Vec<Var> = vec![
        Var::from_tensor(&Tensor::from_vec(init[0].clone(), (2, 3), &dev).unwrap()).unwrap(),
        Var::from_tensor(&Tensor::from_vec(init[1].clone(), 4, &dev).unwrap()).unwrap(),
    ];
    let config = AdamWConfig {
        beta1: BETA1,
        beta2: BETA2,
        eps: EPS,
        weight_decay: WEIGHT_DECAY,
    };
    let named = |vars: &[Var]| -> Vec<(String, Var)> {
        names
            .iter()
            .map(|n| n.to_string())
            .zip(vars.iter().cloned())
            .collect()
    };
    let mut opt = AdamW::new(named(&vars), config).unwrap();
    let mut reference: Vec<Reference> = init.iter().map(|p| Reference::new(p)).collect();
    // A second optimiser restored from the first's state after the step without a gradient
    // for `b`, on copies of the parameters: it must continue identically.
    let mut resumed: Option<(AdamW, Vec<Var>)> = None;

    let mut worst = [0f64; 3]; // parameters, first moments, second moments
    for step in 0..STEPS {
        let lr = cosine_with_warmup(PEAK_LR, step, WARMUP, STEPS);
        assert!(
            (lr - schedule(step)).abs() <= 1e-15,
            "step {step}: {lr} vs {}",
            schedule(step)
        );
        let mut grads = HashMap::new();
        for (k, name) in names.iter().enumerate() {
            if *name == "b" && step == NO_GRAD_FOR_B {
                continue;
            }
            let g = gradient(k, init[k].len(), step);
            reference[k].step(&g, lr);
            let shape = vars[k].as_tensor().shape().clone();
            grads.insert(name.to_string(), Tensor::from_vec(g, shape, &dev).unwrap());
        }
        opt.step(&grads, lr).unwrap();
        if let Some((other, _)) = resumed.as_mut() {
            other.step(&grads, lr).unwrap();
        }

        let state = opt.state_tensors();
        for (k, name) in names.iter().enumerate() {
            let r = &reference[k];
            let checks = [
                values(vars[k].as_tensor()),
                values(&state[&format!("{name}.exp_avg")]),
                values(&state[&format!("{name}.exp_avg_sq")]),
            ];
            for (c, (got, want)) in checks.iter().zip([&r.p, &r.m, &r.v]).enumerate() {
                let rel = max_relative(got, want);
                worst[c] = worst[c].max(rel);
                assert!(
                    rel <= 1e-6,
                    "step {step}, {name} ({}): {got:?} vs {want:?} (relative {rel:e})",
                    ["parameter", "exp_avg", "exp_avg_sq"][c]
                );
            }
        }
        if let Some((_, copies)) = &resumed {
            for (var, copy) in vars.iter().zip(copies) {
                let (a, b) = (values(var.as_tensor()), values(copy.as_tensor()));
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "step {step}: the resumed run differs");
            }
        }
        if step == NO_GRAD_FOR_B {
            let copies: Vec<Var> = vars
                .iter()
                .map(|v| Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap())
                .collect();
            let mut other = AdamW::new(named(&copies), config).unwrap();
            other
                .restore(&state, opt.steps(), Path::new("in-memory"))
                .unwrap();
            resumed = Some((other, copies));
        }
    }
    assert_eq!(opt.steps(), STEPS);
    // `b` missed one step; its bias correction counts its own updates.
    assert_eq!(reference[1].t as u64, STEPS - 1);
    println!(
        "max relative difference from the f64 definition over {STEPS} steps: parameters \
         {:.2e}, exp_avg {:.2e}, exp_avg_sq {:.2e}",
        worst[0], worst[1], worst[2]
    );
}
