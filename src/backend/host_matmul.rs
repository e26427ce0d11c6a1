//! Matrix products on host memory with the `gemm` crate (the kernels Burn's `flex` backend
//! uses), shared by the inference pass and the training operations on `flex`.

use rayon::prelude::*;

/// A read-only `rows x cols` matrix in a slice, with element `(i, j)` at
/// `i * row_stride + j * col_stride`: a row-major matrix has `col_stride == 1`, its transpose
/// is the same slice with the two strides swapped.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatRef<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Distance between rows.
    pub row_stride: usize,
    /// Distance between columns.
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix whose rows are `row_stride` apart.
    pub fn rows(data: &'a [f32], row_stride: usize) -> Self {
        MatRef { data, row_stride, col_stride: 1 }
    }

    /// The transpose of a row-major matrix whose rows are `row_stride` apart.
    pub fn transposed(data: &'a [f32], row_stride: usize) -> Self {
        MatRef { data, row_stride: 1, col_stride: row_stride }
    }

    /// Whether element `(rows - 1, cols - 1)` lies inside the slice.
    fn holds(&self, rows: usize, cols: usize) -> bool {
        (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

/// `dst[i, j] (+)= sum_p lhs[i, p] rhs[p, j]` for `[m, k, n]` = rows, inner size and columns
/// (added to `dst` if `read_dst`, else written over it); `dst` is row-major with rows
/// `dst_row_stride` apart.
///
/// Large products are split into one part per thread, each multiplied by one thread: by rows
/// when every part keeps at least 128 (on 2 cores, 728x728 by 196 to 1,568 columns and
/// 2048x1536x49 ran 8-15% faster that way than with the `gemm` crate's own threading), else by
/// columns when every part keeps at least 512 (the stem's 64-row products: 1.3x faster);
/// products too small for either (many threads) use the crate's threading.
///
/// # Panics
/// If an operand's slice is too short for its extents.
pub(crate) fn matmul(dst: &mut [f32], dst_row_stride: usize, [m, k, n]: [usize; 3], lhs: MatRef, rhs: MatRef, read_dst: bool) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= (m - 1) * dst_row_stride + n, "matmul: dst too short");
    if k == 0 {
        if !read_dst {
            dst.chunks_mut(dst_row_stride).take(m).for_each(|row| row[..n].fill(0.0));
        }
        return;
    }
    assert!(lhs.holds(m, k), "matmul: lhs too short");
    assert!(rhs.holds(k, n), "matmul: rhs too short");
    let threads = rayon::current_num_threads();
    let large = m * k * n >= 192 * 192 * 192;
    let parts = if large { threads } else { 1 };
    let by_rows = m >= 128 * parts;
    if !by_rows && n < 512 * parts && parts > 1 && k >= 1024 * parts {
        matmul_split_inner(dst, dst_row_stride, [m, k, n], lhs, rhs, read_dst, parts);
        return;
    }
    if !by_rows && n < 512 * parts {
        // SAFETY: one call over exactly the asserted extents of the three slices.
        unsafe { gemm_into(dst.as_mut_ptr(), dst_row_stride, lhs, rhs, [m, k, n], read_dst, gemm::Parallelism::Rayon(0)) };
        return;
    }
    let (split, align) = if by_rows { (m, 16) } else { (n, 8) };
    let step = split.div_ceil(parts).div_ceil(align) * align;
    let dst = SendPtr(dst.as_mut_ptr());
    (0..split.div_ceil(step)).into_par_iter().for_each(|part| {
        let range = part * step..((part + 1) * step).min(split);
        let (rows, cols) = if by_rows { (range, 0..n) } else { (0..m, range) };
        let lhs = MatRef { data: &lhs.data[rows.start * lhs.row_stride..], ..lhs };
        let rhs = MatRef { data: &rhs.data[cols.start * rhs.col_stride..], ..rhs };
        // SAFETY: the asserts above keep every element touched inside the three slices; the
        // parts write disjoint rows or columns of `dst`, which is exclusively borrowed for the
        // whole call.
        unsafe {
            gemm_into(
                dst.at(rows.start * dst_row_stride + cols.start),
                dst_row_stride,
                lhs,
                rhs,
                [rows.len(), k, cols.len()],
                read_dst,
                gemm::Parallelism::None,
            )
        };
    });
}

/// [`matmul`] of a small result over a long inner dimension (a weight gradient summed over
/// many pixels): each thread multiplies one range of the inner dimension into its own partial
/// result, then the partials are added into `dst`.
fn matmul_split_inner(dst: &mut [f32], dst_row_stride: usize, [m, k, n]: [usize; 3], lhs: MatRef, rhs: MatRef, read_dst: bool, parts: usize) {
    let step = k.div_ceil(parts);
    let partials: Vec<Vec<f32>> = (0..k.div_ceil(step))
        .into_par_iter()
        .map(|part| {
            let range = part * step..((part + 1) * step).min(k);
            let lhs = MatRef { data: &lhs.data[range.start * lhs.col_stride..], ..lhs };
            let rhs = MatRef { data: &rhs.data[range.start * rhs.row_stride..], ..rhs };
            let mut partial = vec![0.0f32; m * n];
            // SAFETY: `partial` is this thread's own m x n buffer; the operands hold their
            // extents (asserted by the caller) from the range's start.
            unsafe { gemm_into(partial.as_mut_ptr(), n, lhs, rhs, [m, range.len(), n], false, gemm::Parallelism::None) };
            partial
        })
        .collect();
    for (i, row) in dst.chunks_mut(dst_row_stride).take(m).enumerate() {
        for (j, out) in row[..n].iter_mut().enumerate() {
            let sum: f32 = partials.iter().map(|partial| partial[i * n + j]).sum();
            *out = if read_dst { *out + sum } else { sum };
        }
    }
}

/// `dst (+)= lhs x rhs` for `[m, k, n]` operands (added to `dst` if `read_dst`).
///
/// # Safety
/// Every `dst` element of the `m x n` extent at `dst_row_stride` must be writable and not
/// accessed concurrently; the operands must hold their extents.
unsafe fn gemm_into(dst: *mut f32, dst_row_stride: usize, lhs: MatRef, rhs: MatRef, [m, k, n]: [usize; 3], read_dst: bool, parallelism: gemm::Parallelism) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_row_stride as isize,
            read_dst,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
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
pub(crate) struct SendPtr(pub *mut f32);

// SAFETY: users write disjoint elements from each thread while the buffer is exclusively
// borrowed.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer `offset` elements further.
    ///
    /// # Safety
    /// `offset` must stay inside the buffer.
    pub(crate) unsafe fn at(self, offset: usize) -> *mut f32 {
        unsafe { self.0.add(offset) }
    }
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
    /// strides wider than the columns, transposed operands, adding to `dst` or writing over it.
    #[test]
    fn matmul_matches_the_plain_sum_for_every_split() {
        for (threads, [m, k, n], read_dst, transposed) in [
            (2, [300, 200, 150], true, [false, false]),
            (2, [64, 288, 2000], false, [false, true]),
            (2, [20, 30, 40], true, [true, false]),
            (16, [40, 300, 700], false, [false, false]),
            (3, [500, 100, 1000], true, [true, true]),
            (3, [500, 100, 1000], false, [false, false]),
            (2, [7, 0, 5], false, [false, false]),
            (2, [40, 3000, 30], true, [false, true]),
            (3, [20, 5000, 17], false, [true, true]),
        ] {
            let dst_stride = n + 5;
            let operand = |rows: usize, cols: usize, transposed: bool, seed: usize| {
                let stride = if transposed { rows + 2 } else { cols + 3 };
                let outer = if transposed { cols } else { rows };
                (values(outer.max(1) * stride, seed), stride, transposed)
            };
            let (lhs, lhs_stride, lhs_t) = operand(m, k, transposed[0], 1);
            let (rhs, rhs_stride, rhs_t) = operand(k, n, transposed[1], 2);
            let strides = |stride: usize, t: bool| if t { (1, stride) } else { (stride, 1) };
            let (lrs, lcs) = strides(lhs_stride, lhs_t);
            let (rrs, rcs) = strides(rhs_stride, rhs_t);
            let start = values(m * dst_stride, 3);
            let mut dst = start.clone();
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let lhs_ref = MatRef { data: &lhs, row_stride: lrs, col_stride: lcs };
            let rhs_ref = MatRef { data: &rhs, row_stride: rrs, col_stride: rcs };
            pool.install(|| matmul(&mut dst, dst_stride, [m, k, n], lhs_ref, rhs_ref, read_dst));
            for i in 0..m {
                for j in 0..dst_stride {
                    let before = start[i * dst_stride + j] as f64;
                    let expected = if j < n {
                        let product = (0..k).map(|p| lhs[i * lrs + p * lcs] as f64 * rhs[p * rrs + j * rcs] as f64).sum::<f64>();
                        if read_dst { before + product } else { product }
                    } else {
                        before
                    };
                    let got = dst[i * dst_stride + j] as f64;
                    assert!(
                        (got - expected).abs() <= 1e-4 * (1.0 + expected.abs()),
                        "{threads} threads {m}x{k}x{n} read {read_dst} {transposed:?}: [{i}, {j}] {got} vs {expected}"
                    );
                }
            }
        }
    }
}
