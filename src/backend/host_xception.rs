//! The whole Xception backbone as one pass over host memory, for inference on `flex`.
//!
//! Burn runs the network one operation at a time: every convolution, ReLU and addition reads
//! and writes a whole feature map, in a fresh (page-faulting) buffer, and the 1x1 convolutions
//! multiply one image at a time. This pass keeps the same arithmetic but
//! - lays feature maps out channel-major with the batch inside (`[c, n, h, w]`), so that each
//!   1x1 convolution is one matrix product over all images of the batch (longer rows: the
//!   matrix kernels run faster, and batch 8 gets faster per image than batch 1);
//! - applies each ReLU while the next layer reads its input, and leaves the bias of a product
//!   to the layers that read its output (or starts the product from it where the output is
//!   read whole); adds the residual branches inside the product or the pooling;
//! - rotates three scratch buffers instead of allocating one per layer;
//! - runs a batch with an image per thread as one pass per thread over its share of the images.
//!
//! It runs only on a backbone whose batch norms are folded (see
//! [`crate::model::xception::Xception::fold_batch_norm`]), with f32 weights on `flex`; for
//! anything else (and when the host kernels are switched off) the caller runs Burn's layers.
//! Results equal Burn's up to float rounding (biases and residuals enter the sums in another
//! order).

use burn::backend::flex::FlexTensor;
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use burn::tensor::{TensorMetadata, TensorPrimitive};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::host_matmul::{matmul, MatRef, SendPtr};
use super::host_conv;
use super::host_isa;
use super::host_kernels::{depthwise_planes, max_pool_planes, plane_shares, InputRead};
use super::host_profile::{timed, WHOLE_PASS};
use super::Flex;
use crate::model::layers::{ConvBn, SeparableConvBn};
use crate::model::xception::{EntryBlock, MiddleBlock, Xception};

/// Size of one im2col chunk of the stem convolutions (4 MiB), which bounds the column buffer
/// whatever the batch and keeps the columns in cache from their writing to the product (the
/// second convolution's product, one core: 69-84 GFLOP/s with 16 MiB chunks, 81-92 with 4 MiB);
/// the first convolution (depth 27) takes a whole 224x224 image at once.
const IM2COL_CHUNK_FLOATS: usize = 1 << 20;

/// The folded backbone's feature maps (or, if `pooled`, their spatial means as
/// `[n, features, 1, 1]`; the maps are then never written out) computed by the host pass, when
/// `x` is f32 and every layer is in the form the pass handles (folded batch norms, Keras'
/// kernel sizes and strides); `None` otherwise, for Burn's layers.
pub(crate) fn folded_xception(net: &Xception<Flex>, x: &FlexTensor, pooled: bool) -> Option<FlexTensor> {
    timed(|| "backbone".to_string(), WHOLE_PASS, 0.0, || backbone_pass(net, x, pooled))
}

/// [`folded_xception`] without its timing as a whole.
fn backbone_pass(net: &Xception<Flex>, x: &FlexTensor, pooled: bool) -> Option<FlexTensor> {
    let dims: [usize; 4] = x.shape().dims();
    // A permuted or sliced input (e.g. NHWC images seen as NCHW) is gathered once.
    let input = if values(x).is_some() { x.clone() } else { x.to_contiguous() };
    let input = values(&input)?;
    let [n, c, h, w] = dims;
    if n == 0 {
        return None;
    }
    // One pass per thread over its share of the images when the batch has one image per
    // thread: each thread then works on its own maps (no waiting on each other between layers,
    // smaller maps in its caches): on 2 cores batch 8 went from 53.3 to 50.6 ms per image and
    // batch 2 from 57.7 to 53.4 (medians of 9 and 5 interleaved rounds). Smaller batches split
    // every layer across the threads, whose helpers spin between the layers' parts (on the
    // 2-core AVX2 machine, batch 1, medians of seven and five interleaved rounds: 85.7 -> 67.5
    // and 94.7 -> 84.4 ms; sleeping workers woke too late for the short parts).
    let threads = rayon::current_num_threads();
    let per_group = if n >= threads { n.div_ceil(threads) } else { n };
    let groups = n.div_ceil(per_group);
    let run_group = |group: usize| {
        let images = group * per_group..((group + 1) * per_group).min(n);
        let part = &input[images.start * c * h * w..images.end * c * h * w];
        run(net, part, [images.len(), c, h, w], |map, shape, bias| {
            timed(|| "head".to_string(), "finish", 0.0, || {
                if pooled {
                    (mean_relu(map, shape, bias), [shape.n, shape.c, 1, 1])
                } else {
                    (to_nchw_relu(map, shape, bias), [shape.n, shape.c, shape.h, shape.w])
                }
            })
        })
    };
    let parts: Vec<Option<(Vec<f32>, [usize; 4])>> = if groups == 1 && threads > 1 {
        vec![with_spinning_helpers(|| run_group(0))]
    } else {
        (0..groups).into_par_iter().map(run_group).collect()
    };
    // The first part's values (all of them for a single group) take the others' after them.
    let mut parts = parts.into_iter();
    let (mut values, [_, features, h, w]) = parts.next()??;
    for part in parts {
        values.extend_from_slice(&part?.0);
    }
    Some(FlexTensor::from_data(TensorData::new(values, [n, features, h, w])))
}

/// Runs `work` on a thread of the pool while its other threads wait for the parallel parts of
/// `work` by spinning: each executes queued parts as soon as there are any, instead of going to
/// sleep between layers and being woken for the next one (as ONNX Runtime's threads spin). A
/// thread that is running `work` or spinning already returns from a helper at once, so no
/// helper waits on itself or on another helper.
fn with_spinning_helpers<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    thread_local! {
        static BUSY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    /// Marks `work` done when dropped, also when it panics (the helpers then stop).
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let done = AtomicBool::new(false);
    let helpers = rayon::current_num_threads().saturating_sub(1);
    rayon::scope(|scope| {
        for _ in 0..helpers {
            scope.spawn(|_| {
                if BUSY.with(|busy| busy.replace(true)) {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
                BUSY.with(|busy| busy.set(false));
            });
        }
        let was_busy = BUSY.with(|busy| busy.replace(true));
        let output = {
            let _done = Done(&done);
            work()
        };
        BUSY.with(|busy| busy.set(was_busy));
        output
    })
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

/// The weights of a folded [`ConvBn`] with this kernel size and stride and no padding (valid,
/// or "same" for a 1x1 kernel, which pads nothing).
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

/// Scratch kept between passes up to this size in all: fresh buffers cost a page fault and a
/// clearing per page (keeping them took batch 8 from 49-50 to 44-46 ms per image). 256 MiB
/// holds the buffers of 224x224 inputs up to batch 12 (about 170 MB at batch 8, in one pass or
/// in one per thread).
const KEPT_SCRATCH_BYTES: usize = 256 << 20;

/// The scratch of the last passes (one per concurrent pass), for the next ones.
static KEPT_SCRATCH: Mutex<Vec<Scratch>> = Mutex::new(Vec::new());

impl Scratch {
    /// A kept scratch, or empty buffers if there is none.
    fn take() -> Scratch {
        KEPT_SCRATCH.lock().ok().and_then(|mut kept| kept.pop()).unwrap_or_default()
    }

    fn bytes(&self) -> usize {
        let floats = self.maps.iter().map(Vec::len).sum::<usize>() + self.subsampled.len() + self.columns.len();
        floats * std::mem::size_of::<f32>()
    }

    /// Keeps this scratch for a next pass if the kept ones stay within [`KEPT_SCRATCH_BYTES`].
    fn keep(self) {
        if let Ok(mut kept) = KEPT_SCRATCH.lock() {
            if kept.iter().map(Scratch::bytes).sum::<usize>() + self.bytes() <= KEPT_SCRATCH_BYTES {
                kept.push(self);
            }
        }
    }
}

/// Frees the scratch memory the host pass keeps between calls (up to 256 MiB; it is reused by
/// the next inference, so call this only when no more inference follows for a while).
pub fn release_scratch() {
    if let Ok(mut kept) = KEPT_SCRATCH.lock() {
        kept.clear();
    }
}

/// The first `len` elements of `buffer`, growing it (with fresh zeroed memory) if needed.
fn slot(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        *buffer = vec![0.0; len];
    }
    &mut buffer[..len]
}

/// A layer of the pass as Keras names it: block number and part (`block4_sepconv2` is
/// `(4, "sepconv2")`), formatted only when the pass is profiled.
type LayerName = (usize, &'static str);

fn layer_name((block, part): LayerName) -> String {
    format!("block{block}_{part}")
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

/// A feature map in `scratch.maps[MAP]` after a layer: its shape, and the per-channel bias its
/// values still lack (a 1x1 product leaves its bias to the layers that read its output, which
/// add it on the fly instead of a pass over the whole map).
struct Map {
    shape: MapShape,
    bias: Option<Vec<f32>>,
}

impl Map {
    /// How a layer reads this map: plus its missing bias, then the ReLU if `relu`.
    fn read(&self, relu: bool) -> InputRead<'_> {
        InputRead { bias: self.bias.as_deref(), relu }
    }
}

/// Runs the backbone on NCHW `input` of shape `dims` and `finish` on its last map (before the
/// last ReLU, with the bias it lacks); `None` if a layer is not in the form this pass handles.
fn run<R>(
    net: &Xception<Flex>,
    input: &[f32],
    dims: [usize; 4],
    finish: impl FnOnce(&[f32], MapShape, Option<&[f32]>) -> R,
) -> Option<R> {
    let [_, _, h, w] = dims;
    if h < 7 || w < 7 {
        return None;
    }
    let mut scratch = Scratch::take();
    let output = run_with(net, input, dims, &mut scratch)
        .map(|map| finish(&scratch.maps[MAP][..map.shape.len()], map.shape, map.bias.as_deref()));
    scratch.keep();
    output
}

/// The pass itself; leaves the last map in `scratch.maps[MAP]`.
fn run_with(net: &Xception<Flex>, input: &[f32], dims: [usize; 4], scratch: &mut Scratch) -> Option<Map> {
    let [n, c, h, w] = dims;

    // Block 1: two valid 3x3 convolutions (the first with the stem's stride, 2 in Keras), ReLU
    // after each (applied by the layers that read their outputs).
    let stem_stride = net.block1_conv1.conv.stride[0];
    let conv1 = dense_conv(&net.block1_conv1, 3, stem_stride)?;
    let s1 = MapShape { c: conv1.dims[0], n, h: (h - 3) / stem_stride + 1, w: (w - 3) / stem_stride + 1 };
    let conv2 = dense_conv(&net.block1_conv2, 3, 1)?;
    let s2 = MapShape { c: conv2.dims[0], n, h: s1.h - 2, w: s1.w - 2 };
    if conv1.dims[1] != c || conv2.dims[1] != s1.c {
        return None;
    }
    let nchw = |channel: usize, image: usize| (image * c + channel) * h * w;
    let stem = slot(&mut scratch.maps[FILTERED], s1.len());
    conv3x3((1, "conv1"), input, [h, w], nchw, stem_stride, InputRead::default(), &conv1, s1, stem, &mut scratch.columns);
    let cnhw = |channel: usize, image: usize| (channel * n + image) * s1.h * s1.w;
    let (stem, map) = read_write(&mut scratch.maps, FILTERED, MAP);
    let read = InputRead { bias: conv1.bias(), relu: true };
    conv3x3((1, "conv2"), &stem[..s1.len()], [s1.h, s1.w], cnhw, 1, read, &conv2, s2, slot(map, s2.len()), &mut scratch.columns);
    let x = Map { shape: s2, bias: conv2.bias().map(<[f32]>::to_vec) };

    // Block 2's input is that convolution's output before its ReLU: both branches apply it.
    let mut x = entry_block(2, &net.block2, x, true, scratch)?;
    for (number, block) in [(3, &net.block3), (4, &net.block4)] {
        x = entry_block(number, block, x, false, scratch)?;
    }
    for (index, block) in net.middle.iter().enumerate() {
        x = middle_block(5 + index, block, x, scratch)?;
    }
    x = entry_block(13, &net.block13, x, false, scratch)?;

    // Block 14: two separable convolutions, each followed by a ReLU (the last one applied by
    // `finish`).
    let maps = &mut scratch.maps;
    let y = separable((14, "sepconv1"), &net.block14_sepconv1, maps, [MAP, FILTERED, INNER], &x, false, Start::Empty)?;
    separable((14, "sepconv2"), &net.block14_sepconv2, maps, [INNER, FILTERED, MAP], &y, true, Start::Empty)
}

/// What the output buffer of a 1x1 product holds before the product is added.
#[derive(Clone, Copy, PartialEq)]
enum Start {
    /// Nothing: the product is written and its bias left to the readers ([`Map::bias`]).
    Empty,
    /// The bias (for outputs that are read whole: pooled, or the residual branch).
    Bias,
    /// The residual; the bias is added to it first.
    ResidualPlusBias,
}

/// A downsampling residual block (Keras blocks 2, 3, 4, 13) on the map in `maps[MAP]`, leaving
/// its output there. `input_relu`: the input still needs its ReLU (block 2). `number`: the
/// block's number in Keras' names.
fn entry_block(number: usize, block: &EntryBlock<Flex>, x: Map, input_relu: bool, scratch: &mut Scratch) -> Option<Map> {
    let shortcut = dense_conv(&block.shortcut, 1, 2)?;
    let shape = x.shape;
    if shortcut.dims[1] != shape.c {
        return None;
    }
    let sub = MapShape { h: shape.h.div_ceil(2), w: shape.w.div_ceil(2), ..shape };
    let out = MapShape { c: shortcut.dims[0], ..sub };
    let maps = &mut scratch.maps;
    let subsampled = slot(&mut scratch.subsampled, sub.len());
    timed(|| layer_name((number, "shortcut")), "subsample", 0.0, || subsample(&maps[MAP][..shape.len()], shape, x.read(input_relu), subsampled));
    let relu_first = input_relu || block.relu_first;
    let mid = separable((number, "sepconv1"), &block.sepconv1, maps, [MAP, FILTERED, INNER], &x, relu_first, Start::Empty)?;
    pointwise((number, "shortcut"), &scratch.subsampled[..sub.len()], sub, &shortcut, slot(&mut maps[MAP], out.len()), Start::Bias);
    let pre_pool = separable((number, "sepconv2"), &block.sepconv2, maps, [INNER, FILTERED, INNER], &mid, true, Start::Bias)?.shape;
    if pre_pool.c != out.c || pre_pool.n != out.n {
        return None;
    }
    let (pre_pool_map, map) = read_write(maps, INNER, MAP);
    timed(|| layer_name((number, "pool")), "max_pool", 0.0, || {
        max_pool_planes(&pre_pool_map[..pre_pool.len()], &mut map[..out.len()], [pre_pool.h, pre_pool.w], true)
    });
    Some(Map { shape: out, bias: None })
}

/// A middle-flow block on the map in `maps[MAP]`: three (ReLU, separable convolution), plus
/// the input; the output replaces the input. `number`: the block's number in Keras' names.
fn middle_block(number: usize, block: &MiddleBlock<Flex>, x: Map, scratch: &mut Scratch) -> Option<Map> {
    let maps = &mut scratch.maps;
    let [first, second, third] = &block.sepconvs[..] else {
        return None;
    };
    // The input is also the residual, which the last product adds as it is.
    if x.bias.is_some() {
        return None;
    }
    let y = separable((number, "sepconv1"), first, maps, [MAP, FILTERED, INNER], &x, true, Start::Empty)?;
    let y = separable((number, "sepconv2"), second, maps, [INNER, FILTERED, INNER], &y, true, Start::Empty)?;
    if y.shape.c != x.shape.c {
        return None;
    }
    separable((number, "sepconv3"), third, maps, [INNER, FILTERED, MAP], &y, true, Start::ResidualPlusBias)
}

/// A separable convolution of the map `x` in `maps[input]` (read with its missing bias and,
/// if `relu_input`, a ReLU): 3x3 depthwise into `maps[filtered]`, then 1x1 into
/// `maps[output]`, which may be `input` (read only by the depthwise step).
fn separable(
    name: LayerName,
    layer: &SeparableConvBn<Flex>,
    maps: &mut [Vec<f32>; 3],
    [input, filtered, output]: [usize; 3],
    x: &Map,
    relu_input: bool,
    start: Start,
) -> Option<Map> {
    let (depthwise, pointwise_weights) = separable_conv(layer)?;
    let shape = x.shape;
    if depthwise.dims[0] != shape.c {
        return None;
    }
    let n = shape.n;
    let (x_values, filtered_map) = read_write(maps, input, filtered);
    let filtered_map = slot(filtered_map, shape.len());
    timed(|| layer_name(name), "depthwise", 18.0 * shape.len() as f64, || {
        depthwise_planes(&x_values[..shape.len()], filtered_map, [shape.h, shape.w], depthwise.weight(), depthwise.bias(), |plane| plane / n, x.read(relu_input))
    });
    let out = MapShape { c: pointwise_weights.dims[0], ..shape };
    let (filtered_map, output_map) = read_write(maps, filtered, output);
    if start == Start::ResidualPlusBias && output_map.len() < out.len() {
        return None;
    }
    let bias = pointwise(name, &filtered_map[..shape.len()], shape, &pointwise_weights, slot(output_map, out.len()), start);
    Some(Map { shape: out, bias })
}

/// A 1x1 convolution as one matrix product over the batch: `output [out, n*h*w] (+)=
/// W [out, in] x [in, n*h*w]`, plus the bias unless `start` is [`Start::Empty`]; then the bias
/// is returned, for the readers.
fn pointwise(name: LayerName, x: &[f32], shape: MapShape, conv: &ConvWeights, output: &mut [f32], start: Start) -> Option<Vec<f32>> {
    let columns = shape.columns();
    let [out_channels, in_channels, _, _] = conv.dims;
    let flops = 2.0 * (out_channels * in_channels * columns) as f64;
    timed(|| layer_name(name), "product", flops, || pointwise_product(x, columns, conv, output, start))
}

/// [`pointwise`] on `columns` columns.
fn pointwise_product(x: &[f32], columns: usize, conv: &ConvWeights, output: &mut [f32], start: Start) -> Option<Vec<f32>> {
    let [out_channels, in_channels, _, _] = conv.dims;
    let bias = conv.bias();
    let read_output = match (start, bias) {
        (Start::Empty, _) | (Start::Bias, None) => false,
        (Start::Bias, Some(bias)) => {
            plane_shares(output, columns, bias, 1, |_, rows, biases| {
                rows.chunks_mut(columns).zip(biases).for_each(|(row, &b)| row.fill(b));
            });
            true
        }
        (Start::ResidualPlusBias, bias) => {
            if let Some(bias) = bias {
                plane_shares(output, columns, bias, 1, |_, rows, biases| {
                    rows.chunks_mut(columns).zip(biases).for_each(|(row, &b)| row.iter_mut().for_each(|v| *v += b));
                });
            }
            true
        }
    };
    matmul(output, columns, [out_channels, in_channels, columns], MatRef::rows(conv.weight(), in_channels), MatRef::rows(x, columns), read_output);
    match start {
        Start::Empty => bias.map(<[f32]>::to_vec),
        Start::Bias | Start::ResidualPlusBias => None,
    }
}

/// A valid 3x3 convolution with `stride` of the planes of `input` (plane of channel `ci` and
/// image `i` at `plane(ci, i)`, each `h x w`), read as `read` says, into `output` (`[out, n * ho
/// * wo]`, without the bias, which is left to the readers): on a CPU with AVX-512 or AVX2 and
/// FMA, each image's planes are read into `columns` (at stride 2 with each row's even columns
/// first) and convolved directly ([`host_conv::conv3x3_valid`]); otherwise im2col in chunks of
/// output rows, each multiplied into its columns of `output`.
#[allow(clippy::too_many_arguments)]
fn conv3x3(
    name: LayerName,
    input: &[f32],
    [h, w]: [usize; 2],
    plane: impl Fn(usize, usize) -> usize + Sync,
    stride: usize,
    read: InputRead,
    conv: &ConvWeights,
    out: MapShape,
    output: &mut [f32],
    columns: &mut Vec<f32>,
) {
    let [out_channels, in_channels, _, _] = conv.dims;
    let depth = in_channels * 9;
    let all_columns = out.columns();
    let isa = host_isa::detected();
    if (stride == 1 || stride == 2) && host_conv::available(isa) {
        for image in 0..out.n {
            let planes = slot(columns, in_channels * h * w + host_conv::INPUT_TAIL);
            timed(|| layer_name(name), "read", 0.0, || {
                // In bands of rows, one per thread, as the convolution's output rows are split:
                // each thread then mostly reads what it wrote (two threads, batch 1, medians of
                // 5 runs: the stem's second convolution 2.57 ms read in channel shares, 2.19 in
                // bands).
                let band = h.div_ceil(rayon::current_num_threads()).max(1);
                let targets = SendPtr(planes.as_mut_ptr());
                (0..h.div_ceil(band)).into_par_iter().for_each(|part| {
                    let rows = part * band..((part + 1) * band).min(h);
                    for ci in 0..in_channels {
                        let source = &input[plane(ci, image) + rows.start * w..][..rows.len() * w];
                        // SAFETY: rows `rows` of plane `ci`, inside `planes`' first `in_channels
                        // * h * w` floats; the parts write disjoint rows.
                        let target = unsafe { std::slice::from_raw_parts_mut(targets.at((ci * h + rows.start) * w), rows.len() * w) };
                        if stride == 1 {
                            read.copy_run(ci, source, target);
                            continue;
                        }
                        for (row, target_row) in source.chunks(w).zip(target.chunks_mut(w)) {
                            let (evens, odds) = target_row.split_at_mut(w.div_ceil(2));
                            read.copy(ci, row.iter().step_by(2), evens);
                            read.copy(ci, row.iter().skip(1).step_by(2), odds);
                        }
                    }
                });
                planes[in_channels * h * w..].fill(0.0);
            });
            let flops = 2.0 * (out_channels * depth * out.h * out.w) as f64;
            timed(|| layer_name(name), "product", flops, || {
                let output = &mut output[image * out.h * out.w..];
                host_conv::conv3x3_valid(isa, planes, [in_channels, h, w], stride, conv.weight(), out_channels, output, all_columns)
            });
        }
        return;
    }
    let rows_per_chunk = (IM2COL_CHUNK_FLOATS / (depth * out.w)).max(1);
    for image in 0..out.n {
        for first_row in (0..out.h).step_by(rows_per_chunk) {
            let rows = rows_per_chunk.min(out.h - first_row);
            let chunk = rows * out.w;
            let cols = slot(columns, depth * chunk);
            timed(|| layer_name(name), "im2col", 0.0, || cols.par_chunks_mut(chunk).enumerate().for_each(|(r, col)| {
                let (ci, ky, kx) = (r / 9, r / 3 % 3, r % 3);
                let source = &input[plane(ci, image)..][..h * w];
                for (y, col_row) in col.chunks_mut(out.w).enumerate() {
                    let row = &source[((first_row + y) * stride + ky) * w + kx..][..(out.w - 1) * stride + 1];
                    if stride == 1 {
                        read.copy_run(ci, row, col_row);
                    } else {
                        read.copy(ci, row.iter().step_by(stride), col_row);
                    }
                }
            }));
            let offset = (image * out.h + first_row) * out.w;
            let flops = 2.0 * (out_channels * depth * chunk) as f64;
            timed(|| layer_name(name), "product", flops, || {
                matmul(&mut output[offset..], all_columns, [out_channels, depth, chunk], MatRef::rows(conv.weight(), depth), MatRef::rows(cols, chunk), false)
            });
        }
    }
}

/// Every second pixel in both directions (the input of a 1x1 stride-2 shortcut) of a
/// `[c, n, h, w]` map, read as `read` says.
fn subsample(x: &[f32], shape: MapShape, read: InputRead, output: &mut [f32]) {
    let (ho, wo) = (shape.h.div_ceil(2), shape.w.div_ceil(2));
    plane_shares(output, ho * wo, x, shape.h * shape.w, |first, out_planes, planes| {
        for (plane_index, (out_plane, plane)) in (first..).zip(out_planes.chunks_mut(ho * wo).zip(planes.chunks(shape.h * shape.w))) {
            for (y, out_row) in out_plane.chunks_mut(wo).enumerate() {
                let row = &plane[2 * y * shape.w..][..shape.w];
                read.copy(plane_index / shape.n, row.iter().step_by(2), out_row);
            }
        }
    });
}

/// `max(x + bias, 0)` of a `[c, n, h, w]` map, as NCHW.
fn to_nchw_relu(x: &[f32], shape: MapShape, bias: Option<&[f32]>) -> Vec<f32> {
    let plane = shape.h * shape.w;
    let read = InputRead { bias, relu: true };
    let mut output = vec![0.0f32; shape.len()];
    output
        .par_chunks_mut(shape.c * plane)
        .enumerate()
        .for_each(|(image, out_image)| {
            for (channel, out_plane) in out_image.chunks_mut(plane).enumerate() {
                let source = &x[(channel * shape.n + image) * plane..][..plane];
                read.copy_run(channel, source, out_plane);
            }
        });
    output
}

/// The mean of `max(x + bias, 0)` over each plane of a `[c, n, h, w]` map, as `[n, c]`.
fn mean_relu(x: &[f32], shape: MapShape, bias: Option<&[f32]>) -> Vec<f32> {
    let plane = shape.h * shape.w;
    let mut means = vec![0.0f32; shape.n * shape.c];
    plane_shares(&mut means, 1, x, plane, |first, means, planes| {
        for (index, (mean, values)) in (first..).zip(means.iter_mut().zip(planes.chunks(plane))) {
            let b = bias.map_or(0.0, |bias| bias[index / shape.n]);
            *mean = values.iter().map(|&v| (v + b).max(0.0)).sum::<f32>() / plane as f32;
        }
    });
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
    use crate::backend::host_profile::{self, StepTime};
    use crate::model::xception::XceptionConfig;
    use burn::tensor::Distribution;

    /// The profile of `adcorre bench --profile`: every step of every layer under its Keras
    /// name, one call per pass (per image for the stem), the products' arithmetic as
    /// `2 * out * in * columns` (so a separable layer's product is `out / 9` times its
    /// depthwise step, `18 * in * columns`), the steps inside the whole pass, and nothing timed
    /// after `stop`.
    #[test]
    fn profile_names_every_layers_steps_and_counts_their_arithmetic() {
        let device = Default::default();
        let net = XceptionConfig::new().with_width(0.25).with_middle_blocks(1).init::<Flex>(&device).fold_batch_norm();
        let images = Tensor::<Flex, 4>::random([2, 3, 40, 52], Distribution::Uniform(0.0, 1.0), &device);
        let input = primitive(images).expect("a float tensor");
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a thread pool");
        let passes = 3;
        host_profile::start();
        for _ in 0..passes {
            assert!(pool.install(|| folded_xception(&net, &input, true)).is_some());
        }
        let steps = host_profile::stop();
        assert!(folded_xception(&net, &input, true).is_some());
        assert!(host_profile::stop().is_empty(), "nothing is timed after stop");

        let step = |layer: &str, kind: &str| -> &StepTime {
            steps.iter().find(|s| s.layer == layer && s.step == kind).unwrap_or_else(|| panic!("no {kind} step of {layer}"))
        };
        let stem_steps: &[&str] = if host_conv::available(host_isa::detected()) { &["read", "product"] } else { &["im2col", "product"] };
        let layers: &[(&str, &[&str])] = &[
            ("block1_conv1", stem_steps),
            ("block1_conv2", stem_steps),
            ("block2_shortcut", &["subsample", "product"]),
            ("block2_sepconv1", &["depthwise", "product"]),
            ("block2_pool", &["max_pool"]),
            ("block4_sepconv2", &["depthwise", "product"]),
            ("block5_sepconv3", &["depthwise", "product"]),
            ("block13_shortcut", &["subsample", "product"]),
            ("block13_pool", &["max_pool"]),
            ("block14_sepconv2", &["depthwise", "product"]),
            ("head", &["finish"]),
            ("backbone", &[host_profile::WHOLE_PASS]),
        ];
        for (layer, kinds) in layers {
            for kind in *kinds {
                let timed = step(layer, kind);
                let per_pass = if layer.starts_with("block1_") { 2 } else { 1 };
                assert_eq!(timed.calls, passes * per_pass, "{layer} {kind}");
                assert!(timed.seconds > 0.0, "{layer} {kind}");
            }
        }
        assert!(!steps.iter().any(|s| s.layer.starts_with("block6_")), "one middle block only");

        // The stem's first product: 8 filters of depth 27 over 19 x 25 outputs, per image.
        let stem = step("block1_conv1", "product");
        assert_eq!(stem.flops, (passes * 2 * (2 * 8 * 27 * 19 * 25)) as f64);
        let separable = [
            ("block2_sepconv1", &net.block2.sepconv1),
            ("block4_sepconv2", &net.block4.sepconv2),
            ("block5_sepconv3", &net.middle[0].sepconvs[2]),
            ("block14_sepconv2", &net.block14_sepconv2),
        ];
        for (layer, conv) in separable {
            let [out, ..] = conv.pointwise.weight.dims();
            let ratio = step(layer, "product").flops / step(layer, "depthwise").flops;
            assert!((ratio - out as f64 / 9.0).abs() < 1e-9, "{layer}: {ratio} vs {out} / 9");
        }

        // One thread: the steps run one after the other inside the whole pass.
        let inside: f64 = steps.iter().filter(|s| s.step != host_profile::WHOLE_PASS).map(|s| s.seconds).sum();
        assert!(inside <= step("backbone", host_profile::WHOLE_PASS).seconds);
    }
}
