//! The whole Xception backbone as one pass over host memory, for inference on `flex`.
//!
//! Burn runs the network one operation at a time: every convolution, ReLU and addition reads
//! and writes a whole feature map, in a fresh (page-faulting) buffer, and the 1x1 convolutions
//! multiply one image at a time. This pass keeps the same arithmetic but
//! - lays feature maps out channel-major with the batch inside (`[c, n, h, w]`), so that each
//!   1x1 convolution is one matrix product over all images of the batch (longer rows: the
//!   matrix kernels run faster, and batch 8 gets faster per image than batch 1);
//! - applies each ReLU while the next layer reads its input, adds biases by starting the
//!   product from them, and adds the residual branches inside the product or the pooling;
//! - rotates three scratch buffers instead of allocating one per layer.
//!
//! It runs only on a backbone whose batch norms are folded (see
//! [`crate::model::xception::Xception::fold_batch_norm`]), with f32 weights on `flex`; for
//! anything else (and when the host kernels are switched off) the caller runs Burn's layers.
//! Results equal Burn's up to float rounding (biases and residuals enter the sums earlier).

use burn::backend::flex::FlexTensor;
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use rayon::prelude::*;
use std::sync::Mutex;

use super::host_kernels::{cast, depthwise_planes, max_pool_planes, runs_on_host};
use super::Flex;
use crate::model::layers::{ConvBn, SeparableConvBn};
use crate::model::xception::{EntryBlock, MiddleBlock, Xception};

/// Size of one im2col chunk of the stem convolutions (16 MiB), which bounds the column buffer
/// whatever the batch; the first convolution (depth 27) takes a whole 224x224 image at once.
const IM2COL_CHUNK_FLOATS: usize = 1 << 22;

/// `net.forward(x)` computed by the host pass when `x` is f32 on `flex` and every layer is in
/// the form the pass handles (folded batch norms, Keras' kernel sizes and strides); otherwise
/// `x` comes back unchanged for Burn's layers.
pub fn forward<B: Backend>(net: &Xception<B>, x: Tensor<B, 4>) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    on_host(net, x, |map, shape| (to_nchw_relu(map, shape), [shape.n, shape.c, shape.h, shape.w]))
}

/// Like [`forward`], followed by global average pooling: `[batch, 3, h, w]` -> `[batch, c]`.
/// The pooling reads the pass' last map directly, so the feature maps are never written out.
pub fn forward_pooled<B: Backend>(net: &Xception<B>, x: Tensor<B, 4>) -> Result<Tensor<B, 2>, Tensor<B, 4>> {
    on_host(net, x, |map, shape| (mean_relu(map, shape), [shape.n, shape.c]))
}

/// Runs the pass on `x` and `finish` on its last map (before the final ReLU), wrapping what
/// `finish` returns as a tensor; gives `x` back if the pass does not apply.
fn on_host<B: Backend, const D: usize>(
    net: &Xception<B>,
    x: Tensor<B, 4>,
    finish: impl FnOnce(&[f32], MapShape) -> (Vec<f32>, [usize; D]),
) -> Result<Tensor<B, D>, Tensor<B, 4>> {
    if !runs_on_host(&x) {
        return Err(x);
    }
    let Some(net) = (net as &dyn std::any::Any).downcast_ref::<Xception<Flex>>() else {
        return Err(x);
    };
    let x = cast::<Tensor<B, 4>, Tensor<Flex, 4>>(x)?;
    let dims = x.dims();
    let input = match x.clone().into_primitive() {
        TensorPrimitive::Float(tensor) => tensor,
        TensorPrimitive::QFloat(_) => return Err(cast(x).unwrap_or_else(|_| unreachable!("B is Flex"))),
    };
    // A permuted or sliced input (e.g. NHWC images seen as NCHW) is gathered once.
    let input = if values(&input).is_some() { input } else { input.to_contiguous() };
    let output = values(&input).and_then(|values| run(net, values, dims, finish));
    match output {
        Some((values, shape)) => {
            let y = Tensor::<Flex, D>::from_data(TensorData::new(values, shape), &x.device());
            Ok(cast(y).unwrap_or_else(|_| unreachable!("B is Flex")))
        }
        None => Err(cast(x).unwrap_or_else(|_| unreachable!("B is Flex"))),
    }
}

/// The values of a contiguous f32 tensor that owns exactly its elements (no offset, no view).
fn values(tensor: &FlexTensor) -> Option<&[f32]> {
    if tensor.dtype() != burn::tensor::DType::F32 {
        return None;
    }
    let values = tensor.as_slice::<f32>()?;
    (values.len() == tensor.storage::<f32>().len()).then_some(values)
}

/// A feature map's shape in the pass' `[c, n, h, w]` layout.
#[derive(Clone, Copy, Debug)]
struct MapShape {
    c: usize,
    n: usize,
    h: usize,
    w: usize,
}

impl MapShape {
    fn len(&self) -> usize {
        self.c * self.n * self.h * self.w
    }

    /// Columns of the map as a `[c, n * h * w]` matrix.
    fn columns(&self) -> usize {
        self.n * self.h * self.w
    }
}

/// A convolution's weights (and bias) on the host; owns references to the tensors.
struct ConvWeights {
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    /// `[out, in / groups, kh, kw]`.
    dims: [usize; 4],
}

impl ConvWeights {
    /// The weights of `conv` if they are f32 and contiguous.
    fn of(conv: &Conv2d<Flex>) -> Option<Self> {
        let dims = conv.weight.dims();
        let weight = primitive((*conv.weight).clone())?;
        values(&weight)?;
        let bias = match &conv.bias {
            Some(bias) => {
                let bias = primitive((**bias).clone())?;
                values(&bias)?;
                Some(bias)
            }
            None => None,
        };
        Some(ConvWeights { weight, bias, dims })
    }

    fn weight(&self) -> &[f32] {
        self.weight.storage::<f32>()
    }

    fn bias(&self) -> Option<&[f32]> {
        self.bias.as_ref().map(|bias| bias.storage::<f32>())
    }
}

fn primitive<const D: usize>(tensor: Tensor<Flex, D>) -> Option<FlexTensor> {
    match tensor.into_primitive() {
        TensorPrimitive::Float(tensor) => Some(tensor),
        TensorPrimitive::QFloat(_) => None,
    }
}

/// The weights of a folded [`ConvBn`] with this kernel size and stride, valid padding unless
/// `same` (for 1x1 kernels "same" and valid pad nothing).
fn dense_conv(layer: &ConvBn<Flex>, kernel: usize, stride: usize) -> Option<ConvWeights> {
    let conv = &layer.conv;
    let unpadded = matches!(
        conv.padding,
        PaddingConfig2d::Valid | PaddingConfig2d::Explicit(0, 0, 0, 0)
    ) || (kernel == 1 && matches!(conv.padding, PaddingConfig2d::Same));
    let fits = layer.bn.is_none()
        && unpadded
        && conv.groups == 1
        && conv.dilation == [1, 1]
        && conv.stride == [stride; 2]
        && conv.kernel_size == [kernel; 2];
    fits.then(|| ConvWeights::of(conv)).flatten()
}

/// The weights of a folded [`SeparableConvBn`]: a 3x3 "same" depthwise and a 1x1 pointwise.
fn separable_conv(layer: &SeparableConvBn<Flex>) -> Option<(ConvWeights, ConvWeights)> {
    let (depthwise, pointwise) = (&layer.depthwise, &layer.pointwise);
    let depthwise_fits = depthwise.kernel_size == [3, 3]
        && depthwise.stride == [1, 1]
        && depthwise.dilation == [1, 1]
        && matches!(depthwise.padding, PaddingConfig2d::Same | PaddingConfig2d::Explicit(1, 1, 1, 1))
        && depthwise.weight.dims()[1] == 1
        && depthwise.groups == depthwise.weight.dims()[0];
    let pointwise_fits = pointwise.kernel_size == [1, 1]
        && pointwise.stride == [1, 1]
        && pointwise.groups == 1
        && pointwise.weight.dims()[1] == depthwise.groups;
    if layer.bn.is_some() || !depthwise_fits || !pointwise_fits {
        return None;
    }
    Some((ConvWeights::of(depthwise)?, ConvWeights::of(pointwise)?))
}

/// Three rotating feature-map buffers plus room for subsampled shortcuts and im2col columns.
/// They only grow, so a pass allocates each once.
#[derive(Default)]
struct Scratch {
    maps: [Vec<f32>; 3],
    subsampled: Vec<f32>,
    columns: Vec<f32>,
}

/// Scratch kept between passes up to this size: growing a buffer costs a page fault and a
/// clearing per page, a quarter of a batch-1 pass when every pass allocates afresh.
/// 256 MiB holds the buffers of 224x224 inputs up to batch 12.
const KEPT_SCRATCH_BYTES: usize = 256 << 20;

/// The scratch of the last pass, for the next one (a concurrent pass allocates its own).
static KEPT_SCRATCH: Mutex<Option<Scratch>> = Mutex::new(None);

impl Scratch {
    /// The kept scratch, or empty buffers if there is none (or another pass holds it).
    fn take() -> Scratch {
        KEPT_SCRATCH
            .try_lock()
            .ok()
            .and_then(|mut kept| kept.take())
            .unwrap_or_default()
    }

    /// Keeps this scratch for the next pass if it is not larger than [`KEPT_SCRATCH_BYTES`].
    fn keep(self) {
        let floats = self.maps.iter().map(Vec::len).sum::<usize>() + self.subsampled.len() + self.columns.len();
        if floats * std::mem::size_of::<f32>() <= KEPT_SCRATCH_BYTES {
            if let Ok(mut kept) = KEPT_SCRATCH.try_lock() {
                *kept = Some(self);
            }
        }
    }
}

/// Frees the scratch memory the host pass keeps between calls (up to 256 MiB; it is reused by
/// the next inference, so call this only when no more inference follows for a while).
pub fn release_scratch() {
    if let Ok(mut kept) = KEPT_SCRATCH.lock() {
        *kept = None;
    }
}

/// The first `len` elements of `buffer`, growing it (with fresh zeroed memory) if needed.
fn slot(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        *buffer = vec![0.0; len];
    }
    &mut buffer[..len]
}

/// Buffer roles in [`Scratch::maps`]: the current feature map, depthwise outputs, and
/// intermediate maps.
const MAP: usize = 0;
const FILTERED: usize = 1;
const INNER: usize = 2;

/// Buffer `read` of `maps` to read and buffer `write` to fill (`read != write`).
fn read_write(maps: &mut [Vec<f32>; 3], read: usize, write: usize) -> (&[f32], &mut Vec<f32>) {
    debug_assert_ne!(read, write);
    if read < write {
        let (low, high) = maps.split_at_mut(write);
        (&low[read], &mut high[0])
    } else {
        let (low, high) = maps.split_at_mut(read);
        (&high[0], &mut low[write])
    }
}

/// Runs the backbone on NCHW `input` of shape `dims` and `finish` on its last map; `None` if
/// a layer is not in the form this pass handles.
fn run<R>(net: &Xception<Flex>, input: &[f32], dims: [usize; 4], finish: impl FnOnce(&[f32], MapShape) -> R) -> Option<R> {
    let [_, _, h, w] = dims;
    if h < 7 || w < 7 {
        return None;
    }
    let mut scratch = Scratch::take();
    let output = run_with(net, input, dims, &mut scratch).map(|shape| finish(&scratch.maps[MAP][..shape.len()], shape));
    scratch.keep();
    output
}

/// The pass itself; leaves the last map (before its ReLU) in `scratch.maps[MAP]`.
fn run_with(net: &Xception<Flex>, input: &[f32], dims: [usize; 4], scratch: &mut Scratch) -> Option<MapShape> {
    let [n, c, h, w] = dims;

    // Block 1: two valid 3x3 convolutions (the first with stride 2), ReLU after each (the
    // second's applied by the layers that read it).
    let conv1 = dense_conv(&net.block1_conv1, 3, 2)?;
    let s1 = MapShape { c: conv1.dims[0], n, h: (h - 3) / 2 + 1, w: (w - 3) / 2 + 1 };
    let conv2 = dense_conv(&net.block1_conv2, 3, 1)?;
    let s2 = MapShape { c: conv2.dims[0], n, h: s1.h - 2, w: s1.w - 2 };
    if conv1.dims[1] != c || conv2.dims[1] != s1.c {
        return None;
    }
    let nchw = |channel: usize, image: usize| (image * c + channel) * h * w;
    let stem = slot(&mut scratch.maps[FILTERED], s1.len());
    conv3x3(input, [h, w], nchw, 2, false, &conv1, s1, stem, &mut scratch.columns);
    let cnhw = |channel: usize, image: usize| (channel * n + image) * s1.h * s1.w;
    let (stem, map) = read_write(&mut scratch.maps, FILTERED, MAP);
    conv3x3(&stem[..s1.len()], [s1.h, s1.w], cnhw, 1, true, &conv2, s2, slot(map, s2.len()), &mut scratch.columns);

    // Block 2's input is that convolution's output before its ReLU: both branches apply it.
    let mut shape = entry_block(&net.block2, s2, true, scratch)?;
    for block in [&net.block3, &net.block4] {
        shape = entry_block(block, shape, false, scratch)?;
    }
    for block in &net.middle {
        shape = middle_block(block, shape, scratch)?;
    }
    shape = entry_block(&net.block13, shape, false, scratch)?;

    // Block 14: two separable convolutions, each followed by a ReLU (the last one applied by
    // `finish`).
    let maps = &mut scratch.maps;
    shape = separable(&net.block14_sepconv1, maps, [MAP, FILTERED, INNER], shape, false, Accumulate::No)?;
    separable(&net.block14_sepconv2, maps, [INNER, FILTERED, MAP], shape, true, Accumulate::No)
}

/// Whether a 1x1 convolution adds its result to what its output buffer holds (the residual).
#[derive(Clone, Copy, PartialEq)]
enum Accumulate {
    No,
    Yes,
}

/// A downsampling residual block (Keras blocks 2, 3, 4, 13) on the map in `maps[MAP]`, leaving
/// its output there. `input_relu`: the input still needs its ReLU (block 2).
fn entry_block(block: &EntryBlock<Flex>, x: MapShape, input_relu: bool, scratch: &mut Scratch) -> Option<MapShape> {
    let shortcut = dense_conv(&block.shortcut, 1, 2)?;
    if shortcut.dims[1] != x.c {
        return None;
    }
    let sub = MapShape { h: x.h.div_ceil(2), w: x.w.div_ceil(2), ..x };
    let out = MapShape { c: shortcut.dims[0], ..sub };
    let maps = &mut scratch.maps;
    subsample(&maps[MAP][..x.len()], x, input_relu, slot(&mut scratch.subsampled, sub.len()));
    let relu_first = input_relu || block.relu_first;
    let mid = separable(&block.sepconv1, maps, [MAP, FILTERED, INNER], x, relu_first, Accumulate::No)?;
    pointwise(&scratch.subsampled[..sub.len()], sub, &shortcut, slot(&mut maps[MAP], out.len()), Accumulate::No);
    let pre_pool = separable(&block.sepconv2, maps, [INNER, FILTERED, INNER], mid, true, Accumulate::No)?;
    if pre_pool.c != out.c || pre_pool.n != out.n {
        return None;
    }
    let (pre_pool_map, map) = read_write(maps, INNER, MAP);
    max_pool_planes(&pre_pool_map[..pre_pool.len()], &mut map[..out.len()], [pre_pool.h, pre_pool.w], true);
    Some(out)
}

/// A middle-flow block on the map in `maps[MAP]`: three (ReLU, separable convolution), plus
/// the input; the output replaces the input.
fn middle_block(block: &MiddleBlock<Flex>, x: MapShape, scratch: &mut Scratch) -> Option<MapShape> {
    let maps = &mut scratch.maps;
    let [first, second, third] = &block.sepconvs[..] else {
        return None;
    };
    let y = separable(first, maps, [MAP, FILTERED, INNER], x, true, Accumulate::No)?;
    let y = separable(second, maps, [INNER, FILTERED, INNER], y, true, Accumulate::No)?;
    if y.c != x.c {
        return None;
    }
    separable(third, maps, [INNER, FILTERED, MAP], y, true, Accumulate::Yes)
}

/// A separable convolution of the map in `maps[input]` (of `max(x, 0)` if `relu_input`): 3x3
/// depthwise into `maps[filtered]`, then 1x1 into `maps[output]`, which may be `input` (read
/// only by the depthwise step). With [`Accumulate::Yes`] `maps[output]` holds the residual.
fn separable(
    layer: &SeparableConvBn<Flex>,
    maps: &mut [Vec<f32>; 3],
    [input, filtered, output]: [usize; 3],
    shape: MapShape,
    relu_input: bool,
    accumulate: Accumulate,
) -> Option<MapShape> {
    let (depthwise, pointwise_weights) = separable_conv(layer)?;
    if depthwise.dims[0] != shape.c {
        return None;
    }
    let n = shape.n;
    let (x, filtered_map) = read_write(maps, input, filtered);
    let filtered_map = slot(filtered_map, shape.len());
    depthwise_planes(&x[..shape.len()], filtered_map, [shape.h, shape.w], depthwise.weight(), depthwise.bias(), |plane| plane / n, relu_input);
    let out = MapShape { c: pointwise_weights.dims[0], ..shape };
    let (filtered_map, output_map) = read_write(maps, filtered, output);
    if accumulate == Accumulate::Yes && output_map.len() < out.len() {
        return None;
    }
    pointwise(&filtered_map[..shape.len()], shape, &pointwise_weights, slot(output_map, out.len()), accumulate);
    Some(out)
}

/// A 1x1 convolution as one matrix product over the batch: `output [out, n*h*w] (+)=
/// W [out, in] x [in, n*h*w] + bias`.
fn pointwise(x: &[f32], shape: MapShape, conv: &ConvWeights, output: &mut [f32], accumulate: Accumulate) {
    let columns = shape.columns();
    let [out_channels, in_channels, _, _] = conv.dims;
    start_from_bias(output, columns, conv.bias(), accumulate);
    matmul(output, columns, columns, conv.weight(), out_channels, in_channels, x, columns);
}

/// Prepares `output` (rows of `columns`) for an accumulating product: each row set to its
/// bias (or zero), or the bias added to what the row holds.
fn start_from_bias(output: &mut [f32], columns: usize, bias: Option<&[f32]>, accumulate: Accumulate) {
    output.par_chunks_mut(columns).enumerate().for_each(|(row, values)| {
        let b = bias.map_or(0.0, |bias| bias[row]);
        match accumulate {
            Accumulate::No => values.fill(b),
            Accumulate::Yes if b != 0.0 => values.iter_mut().for_each(|v| *v += b),
            Accumulate::Yes => {}
        }
    });
}

/// `dst[i, j] += sum_k lhs[i, k] rhs[k, j]` for `m` rows, `k` inner and `columns` columns;
/// row-major operands with the given row strides.
///
/// Large products are split into one part per thread, each multiplied by one thread: by rows
/// when every part keeps at least 128 (0.3-0.5 of Xception's 1x1 convolutions ran 8-15% faster
/// that way than with the `gemm` crate's own threading, 728x728x196 to x1568 and 2048x1536x49),
/// else by columns when every part keeps at least 512 (the stem's 64-row products: 1.3x
/// faster); products too small for either (many threads) use the crate's threading.
#[allow(clippy::too_many_arguments)]
fn matmul(
    dst: &mut [f32],
    dst_row_stride: usize,
    columns: usize,
    lhs: &[f32],
    m: usize,
    k: usize,
    rhs: &[f32],
    rhs_row_stride: usize,
) {
    if m == 0 || columns == 0 || k == 0 {
        return;
    }
    assert!(lhs.len() >= m * k, "matmul: lhs too short");
    assert!(rhs.len() >= (k - 1) * rhs_row_stride + columns, "matmul: rhs too short");
    assert!(dst.len() >= (m - 1) * dst_row_stride + columns, "matmul: dst too short");
    let threads = rayon::current_num_threads();
    let large = m * k * columns >= 192 * 192 * 192;
    let parts = if large { threads } else { 1 };
    let by_rows = m >= 128 * parts;
    if !by_rows && columns < 512 * parts {
        // SAFETY: one call over exactly the asserted extents of the three slices.
        unsafe { gemm_into(dst.as_mut_ptr(), dst_row_stride, lhs.as_ptr(), k, rhs.as_ptr(), rhs_row_stride, [m, k, columns], gemm::Parallelism::Rayon(0)) };
        return;
    }
    let (split, align) = if by_rows { (m, 16) } else { (columns, 8) };
    let step = split.div_ceil(parts).div_ceil(align) * align;
    let dst = SendPtr(dst.as_mut_ptr());
    (0..split.div_ceil(step)).into_par_iter().for_each(|part| {
        let range = part * step..((part + 1) * step).min(split);
        let (rows, cols) = if by_rows { (range, 0..columns) } else { (0..m, range) };
        // SAFETY: the asserts above keep every element touched (rows of `columns` at the given
        // strides) inside the three slices; the parts write disjoint rows or columns of `dst`,
        // which is exclusively borrowed for the whole call.
        unsafe {
            gemm_into(
                dst.at(rows.start * dst_row_stride + cols.start),
                dst_row_stride,
                lhs.as_ptr().add(rows.start * k),
                k,
                rhs.as_ptr().add(cols.start),
                rhs_row_stride,
                [rows.len(), k, cols.len()],
                gemm::Parallelism::None,
            )
        };
    });
}

/// `dst += lhs x rhs` for `[m, k, columns]` row-major operands with these row strides.
///
/// # Safety
/// Every element at those extents and strides must be valid: readable for `lhs` and `rhs`,
/// writable and not accessed concurrently for `dst`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    dst: *mut f32,
    dst_row_stride: usize,
    lhs: *const f32,
    lhs_row_stride: usize,
    rhs: *const f32,
    rhs_row_stride: usize,
    [m, k, columns]: [usize; 3],
    parallelism: gemm::Parallelism,
) {
    unsafe {
        gemm::gemm(
            m,
            columns,
            k,
            dst,
            1,
            dst_row_stride as isize,
            true,
            lhs,
            1,
            lhs_row_stride as isize,
            rhs,
            1,
            rhs_row_stride as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// A pointer into a buffer whose disjoint parts threads write.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

// SAFETY: used only by `matmul`, whose parts write disjoint elements while the buffer is
// exclusively borrowed.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer `offset` elements further.
    ///
    /// # Safety
    /// `offset` must stay inside the buffer.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        unsafe { self.0.add(offset) }
    }
}

/// A valid 3x3 convolution with `stride` of the planes of `input` (plane of channel `ci` and
/// image `i` at `plane(ci, i)`, each `h x w`), of `max(x, 0)` if `relu_input`: im2col in chunks
/// of output rows, each multiplied into `output` (`[out, n * ho * wo]`, bias first).
#[allow(clippy::too_many_arguments)]
fn conv3x3(
    input: &[f32],
    [h, w]: [usize; 2],
    plane: impl Fn(usize, usize) -> usize + Sync,
    stride: usize,
    relu_input: bool,
    conv: &ConvWeights,
    out: MapShape,
    output: &mut [f32],
    columns: &mut Vec<f32>,
) {
    let [out_channels, in_channels, _, _] = conv.dims;
    let depth = in_channels * 9;
    let all_columns = out.columns();
    start_from_bias(output, all_columns, conv.bias(), Accumulate::No);
    let rows_per_chunk = (IM2COL_CHUNK_FLOATS / (depth * out.w)).max(1);
    for image in 0..out.n {
        for first_row in (0..out.h).step_by(rows_per_chunk) {
            let rows = rows_per_chunk.min(out.h - first_row);
            let chunk = rows * out.w;
            let cols = slot(columns, depth * chunk);
            cols.par_chunks_mut(chunk).enumerate().for_each(|(r, col)| {
                let (ci, ky, kx) = (r / 9, r / 3 % 3, r % 3);
                let source = &input[plane(ci, image)..plane(ci, image) + h * w];
                for (y, col_row) in col.chunks_mut(out.w).enumerate() {
                    let row = &source[((first_row + y) * stride + ky) * w + kx..][..(out.w - 1) * stride + 1];
                    let taps = row.iter().step_by(stride);
                    match relu_input {
                        true => col_row.iter_mut().zip(taps).for_each(|(value, &v)| *value = v.max(0.0)),
                        false if stride == 1 => col_row.copy_from_slice(row),
                        false => col_row.iter_mut().zip(taps).for_each(|(value, &v)| *value = v),
                    }
                }
            });
            let offset = (image * out.h + first_row) * out.w;
            matmul(&mut output[offset..], all_columns, chunk, conv.weight(), out_channels, depth, cols, chunk);
        }
    }
}

/// Every second pixel in both directions (the input of a 1x1 stride-2 shortcut), of
/// `max(x, 0)` if `relu_input`.
fn subsample(x: &[f32], shape: MapShape, relu_input: bool, output: &mut [f32]) {
    let (ho, wo) = (shape.h.div_ceil(2), shape.w.div_ceil(2));
    output
        .par_chunks_mut(ho * wo)
        .zip(x.par_chunks(shape.h * shape.w))
        .for_each(|(out_plane, plane)| {
            for (y, out_row) in out_plane.chunks_mut(wo).enumerate() {
                let row = &plane[2 * y * shape.w..][..shape.w];
                for (value, &v) in out_row.iter_mut().zip(row.iter().step_by(2)) {
                    *value = if relu_input { v.max(0.0) } else { v };
                }
            }
        });
}

/// `max(x, 0)` of a `[c, n, h, w]` map, as NCHW.
fn to_nchw_relu(x: &[f32], shape: MapShape) -> Vec<f32> {
    let plane = shape.h * shape.w;
    let mut output = vec![0.0f32; shape.len()];
    output
        .par_chunks_mut(shape.c * plane)
        .enumerate()
        .for_each(|(image, out_image)| {
            for (channel, out_plane) in out_image.chunks_mut(plane).enumerate() {
                let source = &x[(channel * shape.n + image) * plane..][..plane];
                out_plane.iter_mut().zip(source).for_each(|(o, &v)| *o = v.max(0.0));
            }
        });
    output
}

/// The mean of `max(x, 0)` over each plane of a `[c, n, h, w]` map, as `[n, c]`.
fn mean_relu(x: &[f32], shape: MapShape) -> Vec<f32> {
    let plane = shape.h * shape.w;
    let means: Vec<f32> = x
        .par_chunks(plane)
        .map(|values| values.iter().map(|&v| v.max(0.0)).sum::<f32>() / plane as f32)
        .collect();
    let mut output = vec![0.0f32; shape.n * shape.c];
    for (index, mean) in means.into_iter().enumerate() {
        let (channel, image) = (index / shape.n, index % shape.n);
        output[image * shape.c + channel] = mean;
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in [-1, 1), deterministic.
    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 7919 + seed * 104729) % 2000) as f32 / 1000.0 - 1.0).collect()
    }

    /// `matmul` equals the textbook sum for every way it splits the work: by rows, by columns,
    /// unsplit (small), and the crate's own threading (many threads, narrow product); with row
    /// strides wider than the columns, as the stem's chunks use them.
    #[test]
    fn matmul_matches_the_plain_sum_for_every_split() {
        for (threads, [m, k, columns]) in [
            (2, [300, 200, 150]),
            (2, [64, 288, 2000]),
            (2, [20, 30, 40]),
            (16, [40, 300, 700]),
            (3, [500, 100, 1000]),
        ] {
            let (dst_stride, rhs_stride) = (columns + 5, columns + 3);
            let lhs = values(m * k, 1);
            let rhs = values(k * rhs_stride, 2);
            let start = values(m * dst_stride, 3);
            let mut dst = start.clone();
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| matmul(&mut dst, dst_stride, columns, &lhs, m, k, &rhs, rhs_stride));
            for i in 0..m {
                for j in 0..dst_stride {
                    let expected = if j < columns {
                        start[i * dst_stride + j] as f64
                            + (0..k).map(|p| lhs[i * k + p] as f64 * rhs[p * rhs_stride + j] as f64).sum::<f64>()
                    } else {
                        start[i * dst_stride + j] as f64
                    };
                    let got = dst[i * dst_stride + j] as f64;
                    assert!((got - expected).abs() <= 1e-4 * (1.0 + expected.abs()), "{threads} threads {m}x{k}x{columns}: [{i}, {j}] {got} vs {expected}");
                }
            }
        }
    }
}
