//! Host-memory kernels for the two layers that Burn's CPU backend runs slowest in Xception:
//! 3x3 max pooling with stride 2 (Burn's is a scalar loop that also writes indices) and the
//! 3x3 depthwise convolution (short per-plane rows), on `f32` slices. `flex` runs them for
//! [`crate::backend::ops::AdCorreBackend`]'s operations, and the inference pass
//! (`host_xception`) inside its own loop. Both reproduce Burn's results: the pooling takes the
//! maximum of the same elements, the convolution adds the same products in the same order
//! (checked against Burn in `tests/training_ops.rs`).

use rayon::prelude::*;

use super::generic::same_pool_padding;
use super::host_isa::{self, VectorIsa};
use super::host_simd::{with_vectors, Vector, VectorKernel};

/// 3x3 max pooling, stride 2, TensorFlow "same" padding (padded cells never win), on NCHW
/// data of shape `dims`: returns `[n, c, ceil(h/2), ceil(w/2)]`.
pub(crate) fn max_pool_3x3_stride2_same(input: &[f32], dims: [usize; 4]) -> (Vec<f32>, [usize; 4]) {
    let [n, c, h, w] = dims;
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    let mut output = vec![0.0f32; n * c * ho * wo];
    max_pool_planes(input, &mut output, [h, w], false);
    (output, [n, c, ho, wo])
}

/// [`max_pool_3x3_stride2_same`] on every `h x w` plane of `input` (in any plane order), each
/// written to the plane of `output` at the same index, or added to it when `accumulate` (the
/// host backbone adds the pooled branch onto the shortcut this way).
pub(crate) fn max_pool_planes(input: &[f32], output: &mut [f32], [h, w]: [usize; 2], accumulate: bool) {
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    let (top, _) = same_pool_padding(h);
    let (left, _) = same_pool_padding(w);
    if output.is_empty() {
        return;
    }
    let isa = host_isa::detected();
    plane_shares(output, ho * wo, input, h * w, |_, out_planes, planes| {
        let mut window_rows = vec![f32::NEG_INFINITY; window_rows_len(ho, wo)];
        for (out_plane, plane) in out_planes.chunks_mut(ho * wo).zip(planes.chunks(h * w)) {
            max_pool_plane(isa, plane, out_plane, [h, w], [top, left], accumulate, &mut window_rows);
        }
    });
}

/// Runs `work(first, out_planes, planes)` on one share of whole planes per thread of the pool:
/// `output`'s planes of `out_len` floats and the same planes of `input`, `in_len` floats each,
/// from plane `first` on. On one thread of the AVX2 machine, 728 depthwise planes of 14x14 took
/// 0.29-0.32 ms split per plane by rayon and 0.12-0.16 ms in one loop; four shares per thread
/// measured as slow as the split per plane (one thread, batch 1: depthwise 15.4 ms, one share
/// 10.3, split per plane 14.3).
pub(crate) fn plane_shares(
    output: &mut [f32],
    out_len: usize,
    input: &[f32],
    in_len: usize,
    work: impl Fn(usize, &mut [f32], &[f32]) + Sync + Send,
) {
    let planes = output.len() / out_len.max(1);
    let per_share = planes.div_ceil(rayon::current_num_threads()).max(1);
    output
        .par_chunks_mut(per_share * out_len.max(1))
        .zip(input.par_chunks(per_share * in_len.max(1)))
        .enumerate()
        .for_each(|(share, (out_planes, planes))| work(share * per_share, out_planes, planes));
}

/// Floats of one of [`max_pool_plane`]'s window rows for output rows of `wo`: the `2 * wo + 1`
/// padded positions and what the vector kernel's last loads read past them.
fn window_row_len(wo: usize) -> usize {
    2 * wo + 32
}

/// Output rows whose window rows [`max_pool_plane`]'s vector kernel fills before reading them.
const WINDOW_ROWS: usize = 8;

/// Floats of [`max_pool_plane`]'s `window_rows` for `ho x wo` outputs: a window row for each
/// of up to [`WINDOW_ROWS`] output rows.
fn window_rows_len(ho: usize, wo: usize) -> usize {
    ho.clamp(1, WINDOW_ROWS) * window_row_len(wo)
}

/// One plane of [`max_pool_planes`]. `window_rows` holds [`window_rows_len`] floats, -inf
/// outside `left..left + w` of each window row: an output row's window row receives the column
/// maxima of the (up to) three input rows at the padded positions, so every output is the
/// maximum of three neighbours. (The loops use the first window row for every output row.)
fn max_pool_plane(
    isa: VectorIsa,
    plane: &[f32],
    out_plane: &mut [f32],
    hw: [usize; 2],
    padding: [usize; 2],
    accumulate: bool,
    window_rows: &mut [f32],
) {
    let kernel = MaxPoolPlane { plane, out_plane, hw, padding, accumulate, window_rows };
    if let Err(MaxPoolPlane { plane, out_plane, window_rows, .. }) = with_vectors(isa, kernel) {
        max_pool_plane_loop(plane, out_plane, hw, padding, accumulate, window_rows);
    }
}

/// [`max_pool_plane`] on explicit vectors: the column maxima as masked vectors (the middle
/// flow's rows of 14 are one), and each output vector the maximum of the even, odd and next
/// even positions of the window row, gathered from two pairs of vectors. The window rows of
/// [`WINDOW_ROWS`] output rows are written before any is read, so their loads mostly find the
/// stores done instead of waiting on store forwarding, which fails for loads that straddle
/// stores. (One window row per output row: block 13's 1024 planes of 14x14 took 0.12 ms, 0.10
/// this way, 0.035 in ONNX Runtime; one per output row of the whole plane made block 2's
/// pooling slower, 0.37-0.40 -> 0.41-0.45 ms.)
struct MaxPoolPlane<'a> {
    plane: &'a [f32],
    out_plane: &'a mut [f32],
    hw: [usize; 2],
    padding: [usize; 2],
    accumulate: bool,
    window_rows: &'a mut [f32],
}

impl VectorKernel for MaxPoolPlane<'_> {
    type Output = ();

    #[inline(always)]
    unsafe fn run<V: Vector>(self) {
        let ([h, w], [top, left]) = (self.hw, self.padding);
        let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
        assert!(self.plane.len() >= h * w && self.out_plane.len() >= ho * wo, "max_pool_plane: plane too short");
        let row_len = window_row_len(wo);
        assert!(left + w <= 2 * wo + 1 && self.window_rows.len() >= window_rows_len(ho, wo), "max_pool_plane: window rows too short");
        let (source, out, window_rows) = (self.plane.as_ptr(), self.out_plane.as_mut_ptr(), self.window_rows.as_mut_ptr());
        // SAFETY: (all blocks below) the CPU has `V`'s instruction set (the caller's promise);
        // plane and output accesses take `count` floats inside a row; a window row's stores
        // stay inside `left..left + w` and its loads below `2 * (wo - 1) + 2 * LANES + 2 <=
        // row_len`.
        unsafe {
            for group in (0..ho).step_by(WINDOW_ROWS) {
                let rows = group..(group + WINDOW_ROWS).min(ho);
                for oh in rows.clone() {
                    let first = (2 * oh).saturating_sub(top);
                    let last = (2 * oh + 3 - top).min(h);
                    let window_row = window_rows.add((oh - group) * row_len + left);
                    for x in (0..w).step_by(V::LANES) {
                        let count = V::LANES.min(w - x);
                        let mut max = V::load_first(source.add(first * w + x), count);
                        for row in first + 1..last {
                            max = max.max(V::load_first(source.add(row * w + x), count));
                        }
                        max.store_first(window_row.add(x), count);
                    }
                }
                for oh in rows {
                    for x in (0..wo).step_by(V::LANES) {
                        let count = V::LANES.min(wo - x);
                        let at = window_rows.add((oh - group) * row_len + 2 * x) as *const f32;
                        let (pairs, next_pairs) = (V::load(at), V::load(at.add(V::LANES)));
                        let (thirds, next_thirds) = (V::load(at.add(2)), V::load(at.add(V::LANES + 2)));
                        let mut max = pairs.evens(next_pairs).max(pairs.odds(next_pairs)).max(thirds.evens(next_thirds));
                        let target = out.add(oh * wo + x);
                        if self.accumulate {
                            max = V::load_first(target, count).add(max);
                        }
                        max.store_first(target, count);
                    }
                }
            }
        }
    }
}

/// [`max_pool_plane`] as plain loops, for a CPU without AVX2.
fn max_pool_plane_loop(
    plane: &[f32],
    out_plane: &mut [f32],
    hw: [usize; 2],
    padding: [usize; 2],
    accumulate: bool,
    window_rows: &mut [f32],
) {
    let ([h, w], [top, left]) = (hw, padding);
    let wo = w.div_ceil(2);
    for (oh, out_row) in out_plane.chunks_mut(wo).enumerate() {
        let first = (2 * oh).saturating_sub(top);
        let last = (2 * oh + 3 - top).min(h);
        let window_row = &mut window_rows[..window_row_len(wo)];
        let column_max = &mut window_row[left..left + w];
        column_max.copy_from_slice(&plane[first * w..(first + 1) * w]);
        for row in first + 1..last {
            for (m, &v) in column_max.iter_mut().zip(&plane[row * w..(row + 1) * w]) {
                *m = m.max(v);
            }
        }
        let pairs = window_row.chunks_exact(2);
        let thirds = window_row[2..].iter().step_by(2);
        for ((out, pair), &third) in out_row.iter_mut().zip(pairs).zip(thirds) {
            let max = pair[0].max(pair[1]).max(third);
            *out = if accumulate { *out + max } else { max };
        }
    }
}

/// Depthwise 3x3 convolution, stride 1, padding 1 on every side (TensorFlow "same" for this
/// kernel), of `max(x, 0)` if `relu_input` else `x`, on NCHW data of shape `dims` with weights
/// `[c, 1, 3, 3]`. Each output is `((0 + w00 x00) + w01 x01) + ... + w22 x22`: Burn's order.
pub(crate) fn depthwise_conv_3x3_same(input: &[f32], dims: [usize; 4], weight: &[f32], relu_input: bool) -> Vec<f32> {
    let [_, c, h, w] = dims;
    let mut output = vec![0.0f32; input.len()];
    depthwise_planes(input, &mut output, [h, w], weight, None, |plane| plane % c, InputRead { bias: None, relu: relu_input });
    output
}

/// How a kernel reads its input values: plus a per-channel bias they still lack (a 1x1
/// product of the host pass leaves its bias to the layers that read its output), then the ReLU
/// that precedes the layer if `relu`. The default reads values as they are.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct InputRead<'a> {
    /// Bias to add, per channel.
    pub bias: Option<&'a [f32]>,
    /// Whether to apply `max(x, 0)` (after the bias).
    pub relu: bool,
}

impl InputRead<'_> {
    /// Writes `values` (of channel `channel`), read this way, into `target`.
    #[inline(always)]
    pub(crate) fn copy<'v>(&self, channel: usize, values: impl Iterator<Item = &'v f32>, target: &mut [f32]) {
        let pairs = target.iter_mut().zip(values);
        match (self.bias.map(|bias| bias[channel]), self.relu) {
            (Some(b), true) => pairs.for_each(|(t, &v)| *t = (v + b).max(0.0)),
            (Some(b), false) => pairs.for_each(|(t, &v)| *t = v + b),
            (None, true) => pairs.for_each(|(t, &v)| *t = v.max(0.0)),
            (None, false) => pairs.for_each(|(t, &v)| *t = v),
        }
    }

    /// [`InputRead::copy`] of a contiguous run, on the widest vectors this CPU has.
    pub(crate) fn copy_run(&self, channel: usize, values: &[f32], target: &mut [f32]) {
        copy_run(host_isa::detected(), *self, channel, values, target);
    }
}

host_isa::isa_kernel! {
    /// [`InputRead::copy_run`].
    fn copy_run(read: InputRead, channel: usize, values: &[f32], target: &mut [f32]) {
        read.copy(channel, values.iter(), target);
    }
}

/// [`depthwise_conv_3x3_same`] on every `h x w` plane of `input`, plane `p` filtered by channel
/// `channel_of(p)` (so any plane order works), of the input read as `read` says (the ReLU before
/// a separable convolution, and a bias left by the layer before, applied while reading).
///
/// Each plane is read once into three copies with `w + 1` zeros before and after: one as it
/// is (for the middle column of the filter), one with its last column zeroed (for the left
/// column, whose reads at `x - 1` wrap round to the row above at `x = 0`) and one with its first
/// column zeroed (for the right column). Every output is then the same nine reads at fixed
/// offsets, one long vectorised run over the plane written straight to the output: no padded
/// rows, no short row loops (the middle flow's planes are 14 wide). The zeros enter the sums
/// where the "same" padding's zeros do, so the results keep Burn's bits.
pub(crate) fn depthwise_planes(
    input: &[f32],
    output: &mut [f32],
    [h, w]: [usize; 2],
    weight: &[f32],
    bias: Option<&[f32]>,
    channel_of: impl Fn(usize) -> usize + Sync,
    read: InputRead,
) {
    if output.is_empty() {
        return;
    }
    let isa = host_isa::detected();
    plane_shares(output, h * w, input, h * w, |first, out_planes, planes| {
        let mut scratch = DepthwiseScratch::new(isa, [h, w]);
        let filters = Filters { weight, bias, channel_of: &channel_of };
        depthwise_share(isa, planes, out_planes, [h, w], first, filters, read, &mut scratch);
    });
}

/// Where [`depthwise_share`] finds plane `p`'s filter: channel `channel_of(p)`'s 9 weights and
/// bias.
#[derive(Clone, Copy)]
struct Filters<'a> {
    weight: &'a [f32],
    bias: Option<&'a [f32]>,
    channel_of: &'a (dyn Fn(usize) -> usize + Sync),
}

impl Filters<'_> {
    /// Plane `p`'s channel, 9 weights and bias.
    fn of(&self, p: usize) -> (usize, [f32; 9], Option<f32>) {
        let channel = (self.channel_of)(p);
        (channel, std::array::from_fn(|i| self.weight[channel * 9 + i]), self.bias.map(|bias| bias[channel]))
    }
}

/// [`depthwise_planes`] on one share: the planes of `planes` (the first being plane `first`)
/// into those of `out_planes`, in `scratch` made for this `isa` and plane size.
#[allow(clippy::too_many_arguments)]
fn depthwise_share(
    isa: VectorIsa,
    planes: &[f32],
    out_planes: &mut [f32],
    hw: [usize; 2],
    first: usize,
    filters: Filters,
    read: InputRead,
    scratch: &mut DepthwiseScratch,
) {
    let kernel = DepthwiseShare { planes, out_planes, hw, first, filters, read, scratch };
    if let Err(DepthwiseShare { planes, out_planes, scratch, .. }) = with_vectors(isa, kernel) {
        let len = hw[0] * hw[1];
        for (p, (out_plane, plane)) in (first..).zip(out_planes.chunks_mut(len.max(1)).zip(planes.chunks(len.max(1)))) {
            let (channel, k, b) = filters.of(p);
            depthwise_plane_shifted(plane, out_plane, hw, k, b, read, channel, &mut scratch.values);
        }
    }
}

/// Scratch for [`depthwise_share`], made for one instruction set and plane size.
pub(crate) struct DepthwiseScratch {
    /// The vector kernel's two runs, each a plane with `w + 1` zeros before and `w + 1` plus a
    /// vector after; the loops' three shifted copies.
    values: Vec<f32>,
    /// Per vector of a plane (as one run), the lanes whose left and right neighbours are in the
    /// same row (bit `l` for lane `l`).
    same_row: Vec<[u32; 2]>,
}

impl DepthwiseScratch {
    /// Zeroed scratch for planes of `h x w` on `isa`.
    fn new(isa: VectorIsa, [h, w]: [usize; 2]) -> Self {
        let lanes = match isa {
            VectorIsa::Avx512 => 16,
            VectorIsa::Avx2 => 8,
            VectorIsa::Baseline => return Self { values: vec![0.0; 3 * (h * w + 2 * (w + 1))], same_row: Vec::new() },
        };
        let mut same_row = Vec::with_capacity((h * w).div_ceil(lanes));
        // The column of each vector's first lane; the lanes at column 0 and at column `w - 1`
        // lose their left and right neighbours.
        let mut column = 0;
        for _ in (0..h * w).step_by(lanes) {
            let mut masks = [u32::MAX >> (32 - lanes); 2];
            for (mask, first_lane) in masks.iter_mut().zip([(w - column) % w, w - 1 - column]) {
                for lane in (first_lane..lanes).step_by(w) {
                    *mask &= !(1 << lane);
                }
            }
            same_row.push(masks);
            column = (column + lanes) % w;
        }
        // Room for the runs with a zero after each row (AVX2) and for the loops' three copies,
        // should the kernel hand the share back.
        let values = (2 * (h * w + 2 * (w + 1) + lanes)).max(2 * rows_run_len([h, w])).max(3 * (h * w + 2 * (w + 1)));
        Self { values: vec![0.0; values], same_row }
    }
}

/// [`depthwise_share`] on explicit vectors, each plane taken as one run of `h * w` floats. A
/// plane is read once (as `read` says) between `w + 1` zeros before and after, so tap
/// `(dy, dx)` of output `p` is at `p + (dy - 1) * w + dx - 1` of that run: zero above and below
/// the plane. The taps left and right of a row's ends would read the neighbouring row's ends
/// instead, so those products are masked to zero (the `same_row` masks), which is what the zero
/// padding's products add. Burn's order of additions; the last vector's lanes past the plane
/// are not stored. Two runs alternate: the next plane is read before this one is filtered, so
/// the filter's loads, which straddle the read's stores, find them done rather than waiting on
/// store forwarding. (Against LLVM's loop over three shifted copies: no copies, no scalar
/// tail.)
///
/// Where masked products cost extra instructions (AVX2) and rows hold a vector, the runs have
/// a zero after each row instead ([`read_rows`], [`filter_rows`]), which no tap crosses, so no
/// product is masked. On Zen 4 with AVX-512 hidden, one thread, batch 1: the depthwise layers
/// 5.3-5.5 -> 3.9-4.0 ms in all, a middle-flow layer 0.093-0.10 -> 0.070 (ONNX Runtime 3.0 and
/// 0.06). With AVX-512 the same took 3.93-3.94 ms against 3.88-4.15 masked: kept masked there.
struct DepthwiseShare<'a> {
    planes: &'a [f32],
    out_planes: &'a mut [f32],
    hw: [usize; 2],
    first: usize,
    filters: Filters<'a>,
    read: InputRead<'a>,
    scratch: &'a mut DepthwiseScratch,
}

impl VectorKernel for DepthwiseShare<'_> {
    type Output = ();

    #[inline(always)]
    unsafe fn run<V: Vector>(self) {
        let [h, w] = self.hw;
        let (len, margin) = (h * w, w + 1);
        if len == 0 {
            return;
        }
        let count = self.out_planes.len() / len;
        assert!(self.planes.len() >= count * len, "depthwise_share: input too short");
        let DepthwiseScratch { values, same_row } = self.scratch;
        let run_len = len + 2 * margin + V::LANES;
        assert!(values.len() >= 2 * run_len && same_row.len() >= len.div_ceil(V::LANES), "depthwise_share: scratch too short");
        let (source, out, runs) = (self.planes.as_ptr(), self.out_planes.as_mut_ptr(), values.as_mut_ptr());
        let channel = |p: usize| (self.filters.channel_of)(self.first + p);
        if !V::FREE_MASKED_PRODUCTS && w >= V::LANES {
            let row_run_len = rows_run_len([h, w]);
            assert!(values.len() >= 2 * row_run_len, "depthwise_share: scratch too short");
            let first_value = w + 2;
            // SAFETY: as below, for runs of `row_run_len` floats with the plane's values from
            // `first_value` on, `w + 1` apart.
            unsafe {
                read_rows::<V>(source, runs.add(first_value), [h, w], self.read, channel(0));
                for p in 0..count {
                    if p + 1 < count {
                        read_rows::<V>(source.add((p + 1) * len), runs.add((p + 1) % 2 * row_run_len + first_value), [h, w], self.read, channel(p + 1));
                    }
                    let (_, k, b) = self.filters.of(self.first + p);
                    filter_rows::<V>(runs.add(p % 2 * row_run_len + first_value), out.add(p * len), [h, w], k, b);
                }
            }
            return;
        }
        // SAFETY: (all calls below) the CPU has `V`'s instruction set (the caller's promise);
        // plane `p` of `count` lies at `p * len` of the input and the output; run `p % 2` at
        // `(p % 2) * run_len + margin` of `values` has `margin` floats before and `margin +
        // LANES` after it.
        unsafe {
            read_plane::<V>(source, runs.add(margin), len, self.read, channel(0));
            for p in 0..count {
                if p + 1 < count {
                    read_plane::<V>(source.add((p + 1) * len), runs.add((p + 1) % 2 * run_len + margin), len, self.read, channel(p + 1));
                }
                let (_, k, b) = self.filters.of(self.first + p);
                filter_plane::<V>(runs.add(p % 2 * run_len + margin), out.add(p * len), w, len, same_row, k, b);
            }
        }
    }
}

/// Floats of one of [`DepthwiseShare`]'s runs with a zero after each row: a zero row and one
/// zero before the plane's rows of `w + 1`, a zero row after them.
fn rows_run_len([h, w]: [usize; 2]) -> usize {
    (h + 2) * (w + 1) + 1
}

/// The first float of each vector of a row of `w >= lanes` floats: every `lanes`, the last
/// one ending at the row's end (overlapping the one before it unless `lanes` divides `w`).
fn row_vectors(w: usize, lanes: usize) -> impl Iterator<Item = usize> {
    (0..w.div_ceil(lanes)).map(move |v| (v * lanes).min(w - lanes))
}

/// The `h x w` plane (of channel `channel`) at `source` into rows `w + 1` apart at `target`,
/// read as `read` says; the float after each row is left as it is (zero). Every vector is
/// loaded and stored whole (the last of a row overlaps the one before), since masked stores
/// are slow on AMD's AVX2.
///
/// # Safety
/// The CPU has `V`'s instruction set; `w >= V::LANES`; the plane readable at `source`, its
/// rows writable at `target`.
#[inline(always)]
unsafe fn read_rows<V: Vector>(source: *const f32, target: *mut f32, [h, w]: [usize; 2], read: InputRead, channel: usize) {
    let bias = read.bias.map(|bias| V::splat(bias[channel]));
    // SAFETY: the caller's; each vector lies inside its row.
    unsafe {
        for y in 0..h {
            for x in row_vectors(w, V::LANES) {
                let mut value = V::load(source.add(y * w + x));
                if let Some(bias) = bias {
                    value = value.add(bias);
                }
                if read.relu {
                    value = value.relu();
                }
                value.store_first(target.add(y * (w + 1) + x), V::LANES);
            }
        }
    }
}

/// The filtered plane of the rows at `centre` (`w + 1` apart, each followed by a zero, with a
/// zero row and a zero before and a zero row after) into `out`: every tap of output `(y, x)`
/// is at `(y + dy - 1) * (w + 1) + x + dx - 1`, where the zeros stand for the padding, so no
/// product is masked. Burn's order of additions.
///
/// # Safety
/// The CPU has `V`'s instruction set; `w >= V::LANES`; `centre` has `w + 2` readable floats
/// before it and `(h + 1) * (w + 1)` from it; `h * w` floats writable at `out`.
#[inline(always)]
unsafe fn filter_rows<V: Vector>(centre: *const f32, out: *mut f32, [h, w]: [usize; 2], k: [f32; 9], b: Option<f32>) {
    let stride = w + 1;
    // SAFETY: the caller's: the taps of a vector at `(y, x)` read rows `y - 1 ..= y + 1` from
    // `x - 1` to `x + LANES <= w`.
    unsafe {
        let k: [V; 9] = std::array::from_fn(|i| V::splat(k[i]));
        let b = b.map(|b| V::splat(b));
        for y in 0..h {
            for x in row_vectors(w, V::LANES) {
                let mut sum = V::splat(0.0);
                for dy in 0..3 {
                    let row = centre.add((y + dy) * stride + x).sub(stride);
                    sum = sum.add(k[dy * 3].mul(V::load(row.sub(1))));
                    sum = sum.add(k[dy * 3 + 1].mul(V::load(row)));
                    sum = sum.add(k[dy * 3 + 2].mul(V::load(row.add(1))));
                }
                if let Some(b) = b {
                    sum = sum.add(b);
                }
                sum.store_first(out.add(y * w + x), V::LANES);
            }
        }
    }
}

/// `len` floats (of channel `channel`) from `source` into `target`, read as `read` says.
///
/// # Safety
/// The CPU has `V`'s instruction set; `len` floats readable at `source`, writable at `target`.
#[inline(always)]
unsafe fn read_plane<V: Vector>(source: *const f32, target: *mut f32, len: usize, read: InputRead, channel: usize) {
    let bias = read.bias.map(|bias| bias[channel]);
    // SAFETY: the caller's; `count` floats inside `len`.
    unsafe {
        for p in (0..len).step_by(V::LANES) {
            let count = V::LANES.min(len - p);
            let mut value = V::load_first(source.add(p), count);
            if let Some(bias) = bias {
                value = value.add(V::splat(bias));
            }
            if read.relu {
                value = value.relu();
            }
            value.store_first(target.add(p), count);
        }
    }
}

/// The filtered plane of the run at `centre` into `out` (see [`DepthwiseShare`]).
///
/// # Safety
/// The CPU has `V`'s instruction set; `centre` has `w + 1` readable floats before it and
/// `len + w + 1 + LANES` from it; `len` floats writable at `out`; `same_row` covers the plane.
#[inline(always)]
unsafe fn filter_plane<V: Vector>(centre: *const f32, out: *mut f32, w: usize, len: usize, same_row: &[[u32; 2]], k: [f32; 9], b: Option<f32>) {
    // SAFETY: the caller's: the taps of output `p` read `p - w - 1 ..= p + w + 1 + LANES - 1`.
    unsafe {
        let k: [V; 9] = std::array::from_fn(|i| V::splat(k[i]));
        let b = b.map(|b| V::splat(b));
        for (&[left, right], p) in same_row.iter().zip((0..len).step_by(V::LANES)) {
            let mut sum = V::splat(0.0);
            for dy in 0..3 {
                let row = centre.add(p + dy * w).sub(w);
                sum = sum.add(k[dy * 3].mul_where(V::load(row.sub(1)), left));
                sum = sum.add(k[dy * 3 + 1].mul(V::load(row)));
                sum = sum.add(k[dy * 3 + 2].mul_where(V::load(row.add(1)), right));
            }
            if let Some(b) = b {
                sum = sum.add(b);
            }
            sum.store_first(out.add(p), V::LANES.min(len - p));
        }
    }
}

/// One plane (of channel `channel`) of [`depthwise_share`] with filter `k` and bias `b`, as
/// plain loops for a CPU without AVX2: `copies` holds three runs of `h * w + 2 * (w + 1)`
/// floats whose first and last `w + 1` are zero (and stay so).
#[allow(clippy::too_many_arguments)]
fn depthwise_plane_shifted(
    plane: &[f32],
    out_plane: &mut [f32],
    hw: [usize; 2],
    k: [f32; 9],
    b: Option<f32>,
    read: InputRead,
    channel: usize,
    copies: &mut [f32],
) {
    let [h, w] = hw;
    let (len, margin) = (h * w, w + 1);
    let (left, rest) = copies.split_at_mut(len + 2 * margin);
    let (centre, right) = rest.split_at_mut(len + 2 * margin);
    read.copy(channel, plane.iter(), &mut centre[margin..margin + len]);
    left[margin..margin + len].copy_from_slice(&centre[margin..margin + len]);
    right[margin..margin + len].copy_from_slice(&centre[margin..margin + len]);
    for r in 0..h {
        left[margin + r * w + w - 1] = 0.0;
        right[margin + r * w] = 0.0;
    }
    // Output `p` reads tap (dy, dx) at `p + dy * w + dx` of its copy.
    let taps: [&[f32]; 9] = [
        &left[..len], &centre[1..][..len], &right[2..][..len],
        &left[w..][..len], &centre[w + 1..][..len], &right[w + 2..][..len],
        &left[2 * w..][..len], &centre[2 * w + 1..][..len], &right[2 * w + 2..][..len],
    ];
    let out_plane = &mut out_plane[..len];
    for (p, out) in out_plane.iter_mut().enumerate() {
        let mut acc = 0.0f32;
        for (tap, &weight) in taps.iter().zip(&k) {
            acc += weight * tap[p];
        }
        *out = match b {
            Some(b) => acc + b,
            None => acc,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::host_isa::supported;

    /// One output plane in Burn's order, `((0 + k00 x00) + k01 x01) + ... + k22 x22` (plus `b`),
    /// with zeros outside the plane, of the input (of channel `channel`) read as `read` says.
    fn padded_sum(plane: &[f32], [h, w]: [usize; 2], k: [f32; 9], b: Option<f32>, read: InputRead, channel: usize) -> Vec<f32> {
        let mut input = vec![0.0f32; h * w];
        read.copy(channel, plane.iter(), &mut input);
        let at = |y: isize, x: isize| if y < 0 || x < 0 || y >= h as isize || x >= w as isize { 0.0 } else { input[y as usize * w + x as usize] };
        let mut out = Vec::with_capacity(h * w);
        for y in 0..h as isize {
            for x in 0..w as isize {
                let mut acc = 0.0f32;
                for (t, &weight) in k.iter().enumerate() {
                    acc += weight * at(y + t as isize / 3 - 1, x + t as isize % 3 - 1);
                }
                out.push(b.map_or(acc, |b| acc + b));
            }
        }
        out
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 7919 + seed * 104729) % 2003) as f32 / 997.0 - 1.0).collect()
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    /// Every kernel (the vectors' masked runs, AVX2's rows with a zero after each, the loops'
    /// three shifted copies) gives the zero-padded sum's bits on every instruction set, for
    /// planes down to one pixel wide or high, rows of a vector or a few and a part, several
    /// planes of different channels per share, reused buffers included.
    #[test]
    fn depthwise_share_gives_the_padded_sums_bits_on_every_instruction_set() {
        const CHANNELS: usize = 3;
        let weight: Vec<f32> = (0..9 * CHANNELS).map(|i| (i as f32 - 3.7) / 5.0).collect();
        let biases = [0.25f32, -0.5, 1.0];
        let channel_of = |p: usize| (p + 1) % CHANNELS;
        for [h, w] in [[1, 1], [1, 6], [6, 1], [2, 3], [7, 7], [14, 14], [5, 17], [3, 8], [4, 24], [2, 109]] {
            let len = h * w;
            for isa in supported() {
                let mut scratch = DepthwiseScratch::new(isa, [h, w]);
                for (seed, (bias, read)) in [
                    (None, InputRead::default()),
                    (Some(&biases[..]), InputRead { bias: None, relu: true }),
                    (None, InputRead { bias: Some(&biases), relu: true }),
                    (Some(&biases[..]), InputRead { bias: Some(&biases), relu: false }),
                ]
                .into_iter()
                .enumerate()
                {
                    for (first, planes) in [(0, 1), (2, 4)] {
                        let input = values(planes * len, seed + planes);
                        let mut out = vec![f32::NAN; planes * len];
                        let filters = Filters { weight: &weight, bias, channel_of: &channel_of };
                        depthwise_share(isa, &input, &mut out, [h, w], first, filters, read, &mut scratch);
                        for (p, (plane, out_plane)) in (first..).zip(input.chunks(len).zip(out.chunks(len))) {
                            let channel = channel_of(p);
                            let k: [f32; 9] = std::array::from_fn(|i| weight[channel * 9 + i]);
                            let expected = padded_sum(plane, [h, w], k, bias.map(|bias| bias[channel]), read, channel);
                            assert_eq!(bits(out_plane), bits(&expected), "{isa:?} {h}x{w} case {seed} plane {p}");
                        }
                    }
                }
            }
        }
    }

    /// Max pooling gives the same bits on every instruction set, and the maximum of each
    /// (clipped) 3x3 window as `f32::max` takes it (a NaN loses to a number), written or added,
    /// on rows shorter and longer than a vector.
    #[test]
    fn max_pool_plane_is_the_window_maximum_on_every_instruction_set() {
        for ([h, w], nan) in [([1, 1], false), ([2, 5], true), ([7, 7], false), ([14, 13], true), ([5, 40], true), ([3, 109], false), ([20, 9], true)] {
            let mut plane = values(h * w, h + w);
            if nan {
                plane[w + 1] = f32::NAN;
            }
            let dims = [1, 1, h, w];
            let (top, _) = same_pool_padding(h);
            let (left, _) = same_pool_padding(w);
            let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
            let window_max = |oy: usize, ox: usize| {
                let mut max = f32::NEG_INFINITY;
                for y in (2 * oy).saturating_sub(top)..(2 * oy + 3 - top).min(h) {
                    for x in (2 * ox).saturating_sub(left)..(2 * ox + 3 - left).min(w) {
                        max = max.max(plane[y * w + x]);
                    }
                }
                max
            };
            let expected: Vec<f32> = (0..ho * wo).map(|i| window_max(i / wo, i % wo)).collect();
            for isa in supported() {
                let mut out = vec![0.0f32; ho * wo];
                let mut window_rows = vec![f32::NEG_INFINITY; window_rows_len(ho, wo)];
                max_pool_plane(isa, &plane, &mut out, [h, w], [top, left], false, &mut window_rows);
                assert_eq!(bits(&out), bits(&expected), "{isa:?} {h}x{w}");
                let mut sums = vec![0.5f32; ho * wo];
                max_pool_plane(isa, &plane, &mut sums, [h, w], [top, left], true, &mut window_rows);
                assert_eq!(bits(&sums), bits(&expected.iter().map(|max| 0.5 + max).collect::<Vec<f32>>()), "{isa:?} {h}x{w} added");
            }
            assert_eq!(max_pool_3x3_stride2_same(&plane, dims).0, expected);
        }
    }
}
