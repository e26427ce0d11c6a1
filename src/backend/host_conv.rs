//! Direct valid 3x3 convolution on host memory with AVX-512 or AVX2 FMA, for the stem's two
//! convolutions. The second (32 -> 64 channels on 111x111 at 224x224 input), as im2col and a
//! `gemm` product, wrote and re-read 13.7 MB of columns per image: on one core of the Intel
//! AVX-512 machine the im2col took 1.7 ms and the product 4.1 ms, against 2.3 ms for ONNX
//! Runtime's whole convolution; directly, 0.13 ms to read the input and 2.7-2.9 ms. The first
//! (3 -> 32 channels, stride 2) reads its rows deinterleaved, even columns then odd ones, so
//! its taps read consecutive floats too.
//!
//! Each call of the kernel sums, for up to 6 output channels and 4 vectors of one output row
//! (2 on AVX2's 16 registers), the 9 x `in_channels` products in registers and writes them
//! once; the inputs are read at the nine shifted positions straight from the planes, the
//! weights from a copy packed per call in blocks of 6 channels. Lanes past the row's end read
//! the next row (or the buffer's zero tail) and are never stored. Each step loads its inputs
//! first and broadcasts one weight at a time, so the sums, inputs and one weight fit in
//! registers: written with all six weights broadcast first, LLVM hoisted the weights of all
//! nine taps and spilled them (AVX-512, block1_conv2: 3.5-3.8 ms that way, 2.7-2.9 now), and an
//! AVX2 copy of that form (3 channels by 4 vectors) ran at 62-65 GFLOP/s on the Intel machine
//! under `ADCORRE_HOST_ISA=avx2`. Now, capped at AVX2 there (with `gemm` built without its
//! AVX-512 kernels), the stem's second convolution takes 4.1-4.2 ms against 7.8 for im2col and
//! `gemm`.

use rayon::prelude::*;

use super::host_isa::VectorIsa;
use super::host_matmul::SendPtr;

/// Floats after the last plane that the kernel may read (past the last row's end), zeroed.
pub(crate) const INPUT_TAIL: usize = 64;

/// Whether [`conv3x3_valid`] has a kernel for `isa` on this CPU (AVX-512F, or AVX2 with FMA).
pub(crate) fn available(isa: VectorIsa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match isa {
            VectorIsa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            VectorIsa::Avx2 => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            VectorIsa::Baseline => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// `output[o, y * wo + x] = sum over c, ky, kx of weight[o, c * 9 + ky * 3 + kx] *
/// x[c, stride * y + ky, stride * x + kx]`, for `wo = (w - 3) / stride + 1` and `ho` alike,
/// without a bias, at `stride` 1 or 2. `input` holds `in_channels` planes of `h x w` and at
/// least [`INPUT_TAIL`] floats after them: at stride 1 the rows of `x` as they are, at stride 2
/// each row's even columns and then its odd ones (so every tap reads consecutive floats).
/// `weight` is `[out_channels, in_channels * 9]`; output channel `o` starts at
/// `output[o * out_stride]`. Rows are split into one band per thread, so each output is summed
/// in the same order whatever the thread count.
///
/// # Panics
/// If `isa` is not [`available`], `stride` is not 1 or 2, or a slice is too short for these
/// extents.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv3x3_valid(
    isa: VectorIsa,
    input: &[f32],
    [in_channels, h, w]: [usize; 3],
    stride: usize,
    weight: &[f32],
    out_channels: usize,
    output: &mut [f32],
    out_stride: usize,
) {
    assert!(available(isa), "conv3x3_valid: no kernel for {isa:?} on this CPU");
    assert!(h >= 3 && w >= 3, "conv3x3_valid: planes under 3x3");
    assert!(stride == 1 || stride == 2, "conv3x3_valid: stride {stride}");
    let (ho, wo) = ((h - 3) / stride + 1, (w - 3) / stride + 1);
    // Where tap (ky, kx) of output column 0 lies from its row's first input.
    let column = if stride == 1 { [0, 1, 2] } else { [0, w.div_ceil(2), 1] };
    let taps: [usize; 9] = std::array::from_fn(|tap| tap / 3 * w + column[tap % 3]);
    assert!(input.len() >= in_channels * h * w + INPUT_TAIL, "conv3x3_valid: input too short");
    assert!(weight.len() >= out_channels * in_channels * 9, "conv3x3_valid: weight too short");
    if out_channels == 0 {
        return;
    }
    assert!(output.len() >= (out_channels - 1) * out_stride + ho * wo, "conv3x3_valid: output too short");
    // Weights in blocks of `CHANNELS` output channels (the last padded with zeros), each
    // block's `in_channels * 9` taps in a row and the block's channels side by side, so one
    // step of the kernel broadcasts consecutive floats.
    let blocks = out_channels.div_ceil(CHANNELS);
    let depth = in_channels * 9;
    let mut packed = vec![0.0f32; blocks * depth * CHANNELS];
    for (o, row) in weight.chunks(depth).take(out_channels).enumerate() {
        let block = &mut packed[o / CHANNELS * depth * CHANNELS..][..depth * CHANNELS];
        for (i, &value) in row.iter().enumerate() {
            block[i * CHANNELS + o % CHANNELS] = value;
        }
    }
    let offsets: Vec<usize> = (0..depth).map(|i| i / 9 * h * w + taps[i % 9]).collect();
    let out = SendPtr(output.as_mut_ptr());
    let band = ho.div_ceil(rayon::current_num_threads()).max(1);
    (0..ho.div_ceil(band)).into_par_iter().for_each(|part| {
        let rows = part * band..((part + 1) * band).min(ho);
        let geometry = Geometry { isa, offsets: &offsets, first_channel: 0, channels: in_channels, out_stride };
        for y in rows {
            // SAFETY: the asserts above bound every read (a vector of the last output row reads
            // at most `4 * 16 - 1` floats past the end of the last input row it uses, inside the
            // tail) and every write (row `y` of each channel, `wo` floats); `packed` holds every
            // block; the bands write disjoint rows.
            unsafe { output_row(input.as_ptr().add(stride * y * w), &packed, out.at(y * wo), out_channels, wo, geometry) };
        }
    });
}

/// Output channels per call of the kernel: 6 channels by 4 vectors are 24 sums in registers,
/// with the 4 input vectors and one broadcast weight 29 of AVX-512's 32.
const CHANNELS: usize = 6;

/// Input channels summed per pass over an output row: the stem's second convolution reads
/// 32 channels by 3 rows of 111 floats (42.6 KB) per output row, which with the weights
/// overflowed L1; in chunks of 16 the partial sums go through the output (stored and loaded
/// back exactly, so the bits do not change).
const INPUT_CHANNEL_CHUNK: usize = 16;

/// Offsets of one [`conv3x3_valid`] call, and the input channels of one pass.
#[derive(Clone, Copy)]
struct Geometry<'a> {
    /// The kernel's instruction set.
    isa: VectorIsa,
    /// Where tap `i % 9` of input channel `i / 9` lies from an output row's first input.
    offsets: &'a [usize],
    /// The first input channel of this pass: from 0 the sums start at zero, else at the
    /// outputs' values.
    first_channel: usize,
    /// Input channels in this pass.
    channels: usize,
    out_stride: usize,
}

/// One output row of every channel, in blocks of [`CHANNELS`] channels by up to 4 vectors of
/// AVX-512 or 2 of AVX2 (the last channels and columns in smaller blocks), from the weights
/// packed by [`conv3x3_valid`].
///
/// # Safety
/// As [`conv3x3_valid`]'s asserts: `input` at the row's first input, `out` at the row's first
/// output of channel 0, and `g.isa` [`available`].
unsafe fn output_row(input: *const f32, packed: &[f32], out: *mut f32, out_channels: usize, wo: usize, g: Geometry) {
    let (lanes, vectors) = if g.isa == VectorIsa::Avx512 { (16, 4) } else { (8, 2) };
    let in_channels = g.offsets.len() / 9;
    for first_channel in (0..in_channels).step_by(INPUT_CHANNEL_CHUNK) {
        let g = Geometry { first_channel, channels: INPUT_CHANNEL_CHUNK.min(in_channels - first_channel), ..g };
        let mut o = 0;
        while o < out_channels {
            let oc = CHANNELS.min(out_channels - o);
            let weights = &packed[o * g.offsets.len()..][..g.offsets.len() * CHANNELS];
            let mut x = 0;
            while x < wo {
                let len = (vectors * lanes).min(wo - x);
                // SAFETY: the caller's bounds, at channel `o` and column `x`.
                unsafe {
                    let (input, out) = (input.add(x), out.add(o * g.out_stride + x));
                    #[cfg(target_arch = "x86_64")]
                    kernels::dispatch(oc, len.div_ceil(lanes), input, weights, out, len, g);
                    #[cfg(not(target_arch = "x86_64"))]
                    let _ = (input, weights, out);
                }
                x += len;
            }
            o += oc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod kernels {
    use super::super::host_simd::avx2_partial;
    use super::{Geometry, VectorIsa, CHANNELS};
    use std::arch::x86_64::*;

    /// The few operations of [`block`] on one instruction set's vectors, each to be inlined
    /// into a function compiled for that instruction set.
    trait FmaVector: Copy {
        /// Floats per vector.
        const LANES: usize;
        /// Every lane `value`.
        unsafe fn splat(value: f32) -> Self;
        /// `LANES` floats from `source`.
        unsafe fn load(source: *const f32) -> Self;
        /// The first `count` floats from `source` (all for `LANES` or more), zeros in the
        /// other lanes, which are not read.
        unsafe fn load_first(source: *const f32, count: usize) -> Self;
        /// Stores the first `count` lanes (all for `LANES` or more) at `target`.
        unsafe fn store_first(self, target: *mut f32, count: usize);
        /// `self * x + sum`, rounded once.
        unsafe fn fma(self, x: Self, sum: Self) -> Self;
    }

    impl FmaVector for __m512 {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn splat(value: f32) -> Self {
            unsafe { _mm512_set1_ps(value) }
        }
        #[inline(always)]
        unsafe fn load(source: *const f32) -> Self {
            unsafe { _mm512_loadu_ps(source) }
        }
        #[inline(always)]
        unsafe fn load_first(source: *const f32, count: usize) -> Self {
            unsafe { _mm512_maskz_loadu_ps(mask16(count), source) }
        }
        #[inline(always)]
        unsafe fn store_first(self, target: *mut f32, count: usize) {
            unsafe { _mm512_mask_storeu_ps(target, mask16(count), self) }
        }
        #[inline(always)]
        unsafe fn fma(self, x: Self, sum: Self) -> Self {
            unsafe { _mm512_fmadd_ps(self, x, sum) }
        }
    }

    /// The first `count` of 16 lanes (all for 16 or more).
    #[inline(always)]
    fn mask16(count: usize) -> __mmask16 {
        if count >= 16 { 0xffff } else { ((1u32 << count) - 1) as __mmask16 }
    }

    impl FmaVector for __m256 {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn splat(value: f32) -> Self {
            unsafe { _mm256_set1_ps(value) }
        }
        #[inline(always)]
        unsafe fn load(source: *const f32) -> Self {
            unsafe { _mm256_loadu_ps(source) }
        }
        #[inline(always)]
        unsafe fn load_first(source: *const f32, count: usize) -> Self {
            unsafe { avx2_partial::load_first(source, count) }
        }
        #[inline(always)]
        unsafe fn store_first(self, target: *mut f32, count: usize) {
            unsafe { avx2_partial::store_first(target, count, self) }
        }
        #[inline(always)]
        unsafe fn fma(self, x: Self, sum: Self) -> Self {
            unsafe { _mm256_fmadd_ps(self, x, sum) }
        }
    }

    /// Runs [`block`] for `oc` channels (1 to 6) and `nv` vectors (1 to 4 of AVX-512, 1 to 2
    /// of AVX2).
    ///
    /// # Safety
    /// As [`super::output_row`].
    pub(super) unsafe fn dispatch(oc: usize, nv: usize, input: *const f32, weights: &[f32], out: *mut f32, len: usize, g: Geometry) {
        macro_rules! by_channels {
            ($kernel:ident, $($nv:literal)|+) => {
                match (oc, nv) {
                    $((1, $nv) => unsafe { $kernel::<1, $nv>(input, weights, out, len, g) },
                    (2, $nv) => unsafe { $kernel::<2, $nv>(input, weights, out, len, g) },
                    (3, $nv) => unsafe { $kernel::<3, $nv>(input, weights, out, len, g) },
                    (4, $nv) => unsafe { $kernel::<4, $nv>(input, weights, out, len, g) },
                    (5, $nv) => unsafe { $kernel::<5, $nv>(input, weights, out, len, g) },
                    (_, $nv) => unsafe { $kernel::<6, $nv>(input, weights, out, len, g) },)+
                    _ => unreachable!("conv3x3_valid: {nv} vectors"),
                }
            };
        }
        if g.isa == VectorIsa::Avx512 {
            by_channels!(block_avx512, 1 | 2 | 3 | 4)
        } else {
            by_channels!(block_avx2, 1 | 2)
        }
    }

    /// [`block`] on AVX-512 vectors.
    ///
    /// # Safety
    /// As [`block`]; the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn block_avx512<const OC: usize, const NV: usize>(input: *const f32, weights: &[f32], out: *mut f32, len: usize, g: Geometry) {
        unsafe { block::<__m512, OC, NV>(input, weights, out, len, g) }
    }

    /// [`block`] on AVX2 vectors.
    ///
    /// # Safety
    /// As [`block`]; the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2<const OC: usize, const NV: usize>(input: *const f32, weights: &[f32], out: *mut f32, len: usize, g: Geometry) {
        unsafe { block::<__m256, OC, NV>(input, weights, out, len, g) }
    }

    /// `OC` channels by `NV` vectors of one output row, `len` of its outputs stored: each step
    /// (one tap of one input channel) loads the `NV` input vectors, then broadcasts the
    /// channels' weights one at a time, so the sums, inputs and one weight fit in registers.
    ///
    /// # Safety
    /// As [`dispatch`]; `weights` is one packed block; the CPU has `V`'s instruction set.
    #[inline(always)]
    unsafe fn block<V: FmaVector, const OC: usize, const NV: usize>(input: *const f32, weights: &[f32], out: *mut f32, len: usize, g: Geometry) {
        // SAFETY (every block below): the caller's bounds; `V`'s instructions are on the CPU.
        let mut sums = [[unsafe { V::splat(0.0) }; NV]; OC];
        if g.first_channel > 0 {
            for (o, row) in sums.iter_mut().enumerate() {
                for (v, sum) in row.iter_mut().enumerate() {
                    let first = v * V::LANES;
                    *sum = unsafe { V::load_first(out.add(o * g.out_stride + first), len - first) };
                }
            }
        }
        let steps = g.first_channel * 9..(g.first_channel + g.channels) * 9;
        let step_weights = weights[steps.start * CHANNELS..steps.end * CHANNELS].chunks_exact(CHANNELS);
        for (&offset, step_weights) in g.offsets[steps].iter().zip(step_weights) {
            let x: [V; NV] = std::array::from_fn(|v| unsafe { V::load(input.add(offset + v * V::LANES)) });
            for (o, row) in sums.iter_mut().enumerate() {
                let weight = unsafe { V::splat(step_weights[o]) };
                for (sum, &x) in row.iter_mut().zip(&x) {
                    *sum = unsafe { weight.fma(x, *sum) };
                }
            }
        }
        for (o, row) in sums.iter().enumerate() {
            for (v, &sum) in row.iter().enumerate() {
                let first = v * V::LANES;
                unsafe { sum.store_first(out.add(o * g.out_stride + first), len - first) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel of every instruction set this CPU has matches the plain sum (within rounding:
    /// FMA rounds once per product) at strides 1 and 2 (rows deinterleaved), on sizes that
    /// exercise partial vectors, partial channel blocks, odd and even widths and rows shorter
    /// than a vector, with one and several threads; an instruction set without a kernel (the
    /// baseline, or one the CPU lacks) is refused.
    #[test]
    fn direct_convolution_matches_the_plain_sum() {
        for isa in [VectorIsa::Avx512, VectorIsa::Avx2, VectorIsa::Baseline] {
            if available(isa) {
                convolutions_match_the_plain_sum(isa);
            } else {
                let refused = std::panic::catch_unwind(|| conv3x3_valid(isa, &[0.0; 9 + INPUT_TAIL], [1, 3, 3], 1, &[0.0; 9], 1, &mut [0.0], 1));
                assert!(refused.is_err(), "{isa:?} has no kernel");
            }
        }
    }

    /// [`direct_convolution_matches_the_plain_sum`] on one instruction set.
    fn convolutions_match_the_plain_sum(isa: VectorIsa) {
        let cases = [[3, 9, 12, 5, 1], [32, 13, 111, 64, 1], [20, 5, 30, 7, 1], [2, 3, 3, 1, 1], [5, 20, 70, 7, 1], [4, 6, 40, 3, 1], [3, 13, 224, 32, 2], [3, 9, 15, 7, 2], [2, 4, 3, 1, 2], [4, 7, 140, 5, 2]];
        for [in_channels, h, w, out_channels, stride] in cases {
            let plane = h * w;
            let x: Vec<f32> = (0..in_channels * plane).map(|i| ((i * 7919 % 1009) as f32 - 504.0) / 97.0).collect();
            let mut input: Vec<f32> = if stride == 1 {
                x.clone()
            } else {
                x.chunks(w).flat_map(|row| row.iter().step_by(2).chain(row.iter().skip(1).step_by(2))).copied().collect()
            };
            input.extend([0.0; INPUT_TAIL]);
            let weight: Vec<f32> = (0..out_channels * in_channels * 9).map(|i| ((i * 104729 % 997) as f32 - 498.0) / 311.0).collect();
            let (ho, wo) = ((h - 3) / stride + 1, (w - 3) / stride + 1);
            let out_stride = ho * wo + 5;
            let mut expected = vec![0.0f64; out_channels * ho * wo];
            for o in 0..out_channels {
                for y in 0..ho {
                    for col in 0..wo {
                        let mut sum = 0.0f64;
                        for c in 0..in_channels {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let value = x[c * plane + (stride * y + ky) * w + stride * col + kx];
                                    sum += weight[o * in_channels * 9 + c * 9 + ky * 3 + kx] as f64 * value as f64;
                                }
                            }
                        }
                        expected[(o * ho + y) * wo + col] = sum;
                    }
                }
            }
            let mut bits = Vec::new();
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut output = vec![f32::NAN; out_channels * out_stride];
                pool.install(|| conv3x3_valid(isa, &input, [in_channels, h, w], stride, &weight, out_channels, &mut output, out_stride));
                for o in 0..out_channels {
                    for i in 0..ho * wo {
                        let (got, want) = (output[o * out_stride + i], expected[o * ho * wo + i]);
                        assert!((got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "{isa:?} {threads} threads {:?} stride {stride} o {o} i {i}: {got} vs {want}", [in_channels, h, w]);
                    }
                    assert!(output[o * out_stride + ho * wo..][..5.min(out_stride - ho * wo)].iter().all(|v| v.is_nan()), "wrote past the plane");
                }
                bits.push(output.iter().map(|v| v.to_bits()).collect::<Vec<u32>>());
            }
            assert_eq!(bits[0], bits[1], "the same bits on 1 and 3 threads");
        }
    }
}
