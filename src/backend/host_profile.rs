//! Per-layer timing of the host inference pass (`adcorre bench --profile`), to see where a
//! pass spends its time and to set it beside another runtime's per-node profile
//! (`scripts/profile_vs_ort.py` joins it with ONNX Runtime's).
//!
//! Off unless [`start`] was called: the pass then only checks one flag per step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
#[cfg(feature = "flex")]
use std::time::Instant;

/// One step of one layer: its wall time and arithmetic summed over the timed calls.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StepTime {
    /// The Keras layer it belongs to: `block1_conv1`, `block4_sepconv2`, `block13_shortcut`,
    /// `block2_pool`, or `head` for the last map's ReLU and mean.
    pub layer: String,
    /// What ran: `im2col`, `read` (a direct convolution's input with its bias and ReLU),
    /// `product` (a matrix product or direct convolution, with the bias filled or added before
    /// it), `depthwise`, `subsample`, `max_pool`, `finish`, or [`WHOLE_PASS`].
    pub step: &'static str,
    /// Times it ran.
    pub calls: usize,
    /// Wall time summed over the calls, on the thread that ran the step (its own work split
    /// across the pool's threads included).
    pub seconds: f64,
    /// Floating-point operations summed over the calls (a multiply and an add count two; 0 for
    /// the copies).
    pub flops: f64,
}

/// The step name of a whole pass (layer `backbone`), timed around its steps: its time minus
/// theirs is what runs between them.
pub const WHOLE_PASS: &str = "whole pass";

static ENABLED: AtomicBool = AtomicBool::new(false);
static STEPS: Mutex<Vec<StepTime>> = Mutex::new(Vec::new());

/// Starts timing every step of the host passes that follow, clearing earlier timings.
pub fn start() {
    if let Ok(mut steps) = STEPS.lock() {
        steps.clear();
    }
    ENABLED.store(true, Ordering::SeqCst);
}

/// Stops timing and returns the steps timed since [`start`], in the order they first ran.
/// Passes that ran at once (one per thread, at batches of at least one image per thread) add
/// their times, so a step's time is then about the threads' count times its share of the wall
/// time; time one thread (`RAYON_NUM_THREADS=1`) for wall times.
pub fn stop() -> Vec<StepTime> {
    ENABLED.store(false, Ordering::SeqCst);
    STEPS.lock().map(|mut steps| std::mem::take(&mut *steps)).unwrap_or_default()
}

/// Runs `run`, and while timing is on adds its wall time and `flops` to the step `step` of the
/// layer named by `layer`.
#[cfg(feature = "flex")]
pub(crate) fn timed<R>(layer: impl FnOnce() -> String, step: &'static str, flops: f64, run: impl FnOnce() -> R) -> R {
    if !ENABLED.load(Ordering::Relaxed) {
        return run();
    }
    let started = Instant::now();
    let output = run();
    let seconds = started.elapsed().as_secs_f64();
    let layer = layer();
    if let Ok(mut steps) = STEPS.lock() {
        match steps.iter_mut().find(|timed| timed.layer == layer && timed.step == step) {
            Some(timed) => {
                timed.calls += 1;
                timed.seconds += seconds;
                timed.flops += flops;
            }
            None => steps.push(StepTime { layer, step, calls: 1, seconds, flops }),
        }
    }
    output
}
