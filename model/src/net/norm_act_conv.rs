//! BatchNorm → column mask → ReLU → convolutions as one autograd node that keeps the
//! BatchNorm's input and recomputes the activation in backward (`csrc/norm_act_conv.cpp`).
//!
//! Composed from tch ops, a conv layer's backward holds two full-size maps: the BatchNorm's
//! input and the activated map the next convolution reads. The encoder's widest maps are what
//! bounds the trainer's memory, and the activation is cheap to compute again, so the fused
//! node holds only the first. Values and gradients are bit-identical to the composed ops'.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr};

use tch::nn;
use tch::{Device, Kind, Tensor};

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn textrec_norm_act_conv(
        y: *const c_void,
        gamma: *const c_void,
        beta: *const c_void,
        running_mean: *const c_void,
        running_var: *const c_void,
        mask: *const c_void,
        momentum: f64,
        eps: f64,
        n: usize,
        weights: *const *const c_void,
        geometry: *const i64,
        outputs: *mut *mut c_void,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn textrec_norm_act_conv_recompute_kind() -> c_int;
}

/// How the fused node's backward pass recomputes the activation on this machine: `"fma"` or
/// `"mul-add"` (one pass from the saved statistics, reproducing libtorch's BatchNorm
/// arithmetic), or `"batch-norm"` (libtorch's BatchNorm run again: one more pass, where the
/// arithmetic could not be reproduced bit for bit).
pub fn recompute_path() -> &'static str {
    // SAFETY: no arguments; the C++ side catches every exception.
    match unsafe { textrec_norm_act_conv_recompute_kind() } {
        0 => "fma",
        1 => "mul-add",
        _ => "batch-norm",
    }
}

/// A convolution reading the activated map: its weight (no bias), stride and padding.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConvSpec<'a> {
    pub weight: &'a Tensor,
    pub stride: [i64; 2],
    pub padding: [i64; 2],
}

thread_local! {
    static COMPOSED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the encoder built from separate ops on this thread, as before the fused node
/// existed: for the tests and benchmarks that compare the two. Values and gradients are the
/// same either way; only memory and time differ.
pub fn with_composed_ops<T>(f: impl FnOnce() -> T) -> T {
    /// Puts the previous setting back, also when `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            COMPOSED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(COMPOSED.with(|c| c.replace(true)));
    f()
}

/// Whether the fused node applies to a training pass on `ys`: float on the CPU. On CUDA,
/// autocast would have to be followed inside the node, and the GPU's memory is not what
/// bounds training there. Under CPU bf16 autocast (`ys` is a bf16 convolution output) the
/// separate ops run: a node following autocast was built and measured there, bit-identical,
/// and held no less memory (the peak is set elsewhere) for 5-6% of the speed (BENCHMARKS.md,
/// "The fused node under autocast (tried, not kept), and oneDNN's primitive cache"). (Under
/// `no_grad` the node computes the same values and keeps nothing.)
pub(super) fn applies(ys: &Tensor) -> bool {
    ys.device() == Device::Cpu && ys.kind() == Kind::Float && !COMPOSED.with(Cell::get)
}

#[cfg(test)]
thread_local! {
    static NODES_RUN: Cell<usize> = const { Cell::new(0) };
}

/// How many fused nodes this thread has run: lets a test tell the node from the composed ops,
/// whose values are the same.
#[cfg(test)]
pub(crate) fn nodes_run() -> usize {
    NODES_RUN.with(Cell::get)
}

/// `reader_i(relu(mask · bn(ys)))` for each of `readers`, with `bn` in training mode (batch
/// statistics; running statistics updated only with `update_running`). Panics with libtorch's
/// message if it throws, as tch's own ops do.
pub(super) fn norm_act_conv(
    ys: &Tensor,
    bn: &nn::BatchNorm,
    config: &nn::BatchNormConfig,
    update_running: bool,
    mask: &Tensor,
    readers: &[ConvSpec<'_>],
) -> Vec<Tensor> {
    #[cfg(test)]
    NODES_RUN.with(|n| n.set(n.get() + 1));
    let gamma = bn.ws.as_ref().expect("the encoder's BatchNorms are affine");
    let beta = bn.bs.as_ref().expect("the encoder's BatchNorms are affine");
    let ptr = |t: &Tensor| t.as_ptr() as *const c_void;
    let (running_mean, running_var) = if update_running {
        (ptr(&bn.running_mean), ptr(&bn.running_var))
    } else {
        (std::ptr::null(), std::ptr::null())
    };
    let weights: Vec<*const c_void> = readers.iter().map(|c| ptr(c.weight)).collect();
    let geometry: Vec<i64> = readers
        .iter()
        .flat_map(|c| [c.stride[0], c.stride[1], c.padding[0], c.padding[1]])
        .collect();
    let mut outputs: Vec<*mut c_void> = vec![std::ptr::null_mut(); readers.len()];
    let mut error = [0 as c_char; 512];
    // SAFETY: every pointer is a live tensor (or null where the C++ side allows it) borrowed
    // for the call; `weights`, `geometry` and `outputs` hold one, four and one entries per
    // reader; on success each output is a new tensor whose ownership passes to the
    // `Tensor` built from it.
    unsafe {
        let rc = textrec_norm_act_conv(
            ptr(ys),
            ptr(gamma),
            ptr(beta),
            running_mean,
            running_var,
            ptr(mask),
            config.momentum,
            config.eps,
            readers.len(),
            weights.as_ptr(),
            geometry.as_ptr(),
            outputs.as_mut_ptr(),
            error.as_mut_ptr(),
            error.len(),
        );
        if rc != 0 {
            let msg = CStr::from_ptr(error.as_ptr()).to_string_lossy();
            panic!("fused BatchNorm-ReLU-conv failed: {msg}");
        }
        outputs
            .into_iter()
            .map(|p| Tensor::from_ptr(p.cast()))
            .collect()
    }
}
