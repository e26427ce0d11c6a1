use std::time::Instant;
use adcorre::model::xception::same_max_pool;
use burn::prelude::*;
use burn::tensor::{s, Distribution};
use burn::tensor::ops::PadMode;

fn sep_pool<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    let th = (2 * (ho - 1) + 3).saturating_sub(h);
    let tw = (2 * (wo - 1) + 3).saturating_sub(w);
    let x = x.pad((tw / 2, tw - tw / 2, th / 2, th - th / 2), PadMode::Constant(f32::NEG_INFINITY));
    let e = 2 * wo;
    let a = x.clone().slice(s![.., .., .., 0..e - 1;2]);
    let b = x.clone().slice(s![.., .., .., 1..e;2]);
    let c = x.slice(s![.., .., .., 2..e + 1;2]);
    let x = a.max_pair(b).max_pair(c);
    let e = 2 * ho;
    let a = x.clone().slice(s![.., .., 0..e - 1;2, ..]);
    let b = x.clone().slice(s![.., .., 1..e;2, ..]);
    let c = x.slice(s![.., .., 2..e + 1;2, ..]);
    a.max_pair(b).max_pair(c)
}

fn time_ms<B: Backend>(batch: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..7).map(|_| { let s = Instant::now(); f(); s.elapsed().as_secs_f64() * 1e3 / batch as f64 }).collect();
    t.sort_by(f64::total_cmp);
    t[3]
}

fn main() {
    type B = adcorre::backend::Flex;
    let device = Default::default();
    let pool = same_max_pool();
    for (c, s) in [(128usize, 109usize), (256, 55), (728, 28), (1024, 14)] {
        for batch in [1usize, 8] {
            let x = Tensor::<B, 4>::random([batch, c, s, s], Distribution::Default, &device);
            let r = pool.forward(x.clone());
            let o = sep_pool(x.clone());
            assert_eq!(r.dims(), o.dims());
            let d = (r - o).abs().max().into_scalar();
            let t1 = time_ms::<B>(batch, || { let _ = pool.forward(x.clone()).slice([0..1,0..1,0..1,0..1]).into_data(); });
            let t2 = time_ms::<B>(batch, || { let _ = sep_pool(x.clone()).slice([0..1,0..1,0..1,0..1]).into_data(); });
            println!("{c}x{s} b{batch}: burn {t1:.2} ms/img, separable {t2:.2} ms/img, max diff {d}");
        }
    }
}
