//! 2-D convolution (NCHW, one group) as im2col + GEMM per image, forward and backward, the
//! way PyTorch's `slow_conv2d` CPU kernel lays it out:
//!
//! ```text
//! cols_n = im2col(x_n)                     [Ci·kh·kw, Ho·Wo]
//! y_n    = W · cols_n + b                  W as [Co, Ci·kh·kw]
//! dW     = Σ_n dy_n · cols_nᵀ,  db = Σ_{n,p} dy_n
//! dx_n   = col2im(Wᵀ · dy_n)
//! ```
//!
//! burn-flex's own convolution converts the whole input to NHWC on one thread before its
//! im2col, and Burn's generic backward runs the weight gradient as a convolution of the swapped
//! input with the swapped output gradient (two more single-threaded layout conversions and a
//! GEMM only 9 columns wide for a 3×3 kernel) and the input gradient as a transposed
//! convolution whose col2im runs image by image on one thread. Here every pass reads NCHW rows
//! directly (the im2col rows of a stride-1 convolution are shifted copies of input rows) and
//! the work is split over images.

use burn::tensor::ops::ConvOptions;
use gemm::Parallelism;
use rayon::prelude::*;

use super::sum_in_order;

/// Images per task of the weight gradient: each task sums its images' products into its own
/// partial gradient, and the partials are summed in task order, so the result does not depend
/// on the thread count.
const IMAGES_PER_TASK: usize = 8;

/// The sizes of one convolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    n: usize,
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    kh: usize,
    kw: usize,
    stride: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
    oh: usize,
    ow: usize,
}

impl Geometry {
    /// # Panics
    /// When the channel counts disagree or the kernel does not fit the padded input.
    pub(super) fn new(x: [usize; 4], weight: [usize; 4], options: &ConvOptions<2>) -> Self {
        let [n, ci, h, w] = x;
        let [co, wci, kh, kw] = weight;
        assert_eq!(
            ci, wci,
            "conv2d: the input has {ci} channels, the weight expects {wci}"
        );
        let out = |size: usize, k: usize, axis: usize| {
            let span = options.dilation[axis] * (k - 1) + 1;
            let padded = size + 2 * options.padding[axis];
            assert!(
                padded >= span,
                "conv2d: kernel span {span} exceeds the padded input {padded}"
            );
            (padded - span) / options.stride[axis] + 1
        };
        Self {
            n,
            ci,
            h,
            w,
            co,
            kh,
            kw,
            stride: options.stride,
            pad: options.padding,
            dil: options.dilation,
            oh: out(h, kh, 0),
            ow: out(w, kw, 1),
        }
    }

    pub(super) fn out_shape(&self) -> [usize; 4] {
        [self.n, self.co, self.oh, self.ow]
    }

    /// Whether the im2col matrix of an image is the image itself (`[Ci, H·W]`): a 1×1 kernel
    /// at stride 1 without padding.
    fn pointwise(&self) -> bool {
        [self.kh, self.kw] == [1, 1] && self.stride == [1, 1] && self.pad == [0, 0]
    }

    /// Rows of the im2col matrix (`Ci·kh·kw`).
    fn k(&self) -> usize {
        self.ci * self.kh * self.kw
    }

    fn out_plane(&self) -> usize {
        self.oh * self.ow
    }

    fn in_image(&self) -> usize {
        self.ci * self.h * self.w
    }

    fn out_image(&self) -> usize {
        self.co * self.out_plane()
    }

    /// For the kernel tap `k` on `axis`: the offset of its input index (`o·stride + offset`)
    /// and the output range `lo..hi` whose input index lies inside the image.
    fn taps(&self, axis: usize, k: usize) -> (isize, usize, usize) {
        let (out, size) = if axis == 0 {
            (self.oh, self.h)
        } else {
            (self.ow, self.w)
        };
        let stride = self.stride[axis] as isize;
        let offset = (k * self.dil[axis]) as isize - self.pad[axis] as isize;
        // The first o with o·stride + offset ≥ 0 and the first with o·stride + offset ≥ size.
        let first = |bound: isize| ((bound - offset).max(0) + stride - 1) / stride;
        let lo = (first(0) as usize).min(out);
        let hi = (first(size as isize) as usize).clamp(lo, out);
        (offset, lo, hi)
    }
}

/// Writes `im2col(x_n)` (`[Ci·kh·kw, Ho·Wo]`, zeros where the kernel reads padding) to `cols`.
fn im2col(g: &Geometry, x: &[f32], cols: &mut [f32]) {
    let (plane, out_plane) = (g.h * g.w, g.out_plane());
    let mut rows = cols.chunks_exact_mut(out_plane);
    for c in 0..g.ci {
        let x = &x[c * plane..(c + 1) * plane];
        for ki in 0..g.kh {
            let (offset_y, ylo, yhi) = g.taps(0, ki);
            for kj in 0..g.kw {
                let (offset_x, xlo, xhi) = g.taps(1, kj);
                let row = rows.next().expect("conv2d: im2col rows");
                for (oy, dst) in row.chunks_exact_mut(g.ow).enumerate() {
                    if oy < ylo || oy >= yhi {
                        dst.fill(0.0);
                        continue;
                    }
                    let iy = (oy * g.stride[0]) as isize + offset_y;
                    let src = &x[iy as usize * g.w..(iy as usize + 1) * g.w];
                    dst[..xlo].fill(0.0);
                    dst[xhi..].fill(0.0);
                    if g.stride[1] == 1 {
                        let from = (xlo as isize + offset_x) as usize;
                        dst[xlo..xhi].copy_from_slice(&src[from..from + (xhi - xlo)]);
                    } else {
                        for (ox, d) in dst[xlo..xhi].iter_mut().enumerate() {
                            let ix = ((xlo + ox) * g.stride[1]) as isize + offset_x;
                            *d = src[ix as usize];
                        }
                    }
                }
            }
        }
    }
}

/// Adds the columns `cols` back onto the image they were taken from (the adjoint of
/// [`im2col`]); `dx` must hold zeros or a gradient to add to.
fn col2im(g: &Geometry, cols: &[f32], dx: &mut [f32]) {
    let (plane, out_plane) = (g.h * g.w, g.out_plane());
    let mut rows = cols.chunks_exact(out_plane);
    for c in 0..g.ci {
        let dx = &mut dx[c * plane..(c + 1) * plane];
        for ki in 0..g.kh {
            let (offset_y, ylo, yhi) = g.taps(0, ki);
            for kj in 0..g.kw {
                let (offset_x, xlo, xhi) = g.taps(1, kj);
                let row = rows.next().expect("conv2d: col2im rows");
                for oy in ylo..yhi {
                    let iy = (oy * g.stride[0]) as isize + offset_y;
                    let dst = &mut dx[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let src = &row[oy * g.ow + xlo..oy * g.ow + xhi];
                    if g.stride[1] == 1 {
                        let from = (xlo as isize + offset_x) as usize;
                        for (d, s) in dst[from..from + src.len()].iter_mut().zip(src) {
                            *d += s;
                        }
                    } else {
                        for (ox, s) in src.iter().enumerate() {
                            let ix = ((xlo + ox) * g.stride[1]) as isize + offset_x;
                            dst[ix as usize] += s;
                        }
                    }
                }
            }
        }
    }
}

/// A row-major matrix operand: its data and its row and column strides.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of the row-major `[rows, cols]` matrix `data`.
    fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols,
        }
    }
}

/// `dst[m, n] (+)= a[m, k] · b[k, n]` with `dst` row-major: added to `dst` when `accumulate`.
fn matmul(
    dst: &mut [f32],
    [m, n, k]: [usize; 3],
    a: Mat,
    b: Mat,
    accumulate: bool,
    parallelism: Parallelism,
) {
    assert!(dst.len() >= m * n, "conv2d: GEMM output");
    let last = |mat: Mat, rows: usize, cols: usize| (rows - 1) * mat.rs + (cols - 1) * mat.cs;
    assert!(
        m * n * k == 0 || (last(a, m, k) < a.data.len() && last(b, k, n) < b.data.len()),
        "conv2d: GEMM operands"
    );
    // SAFETY: the asserts above keep every index the strides reach inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Runs `one(cols, gemm threads, n, out_n, in_n)` for every image `n`, where `out` and `input`
/// hold the images' blocks of `out_len` and `in_len` values and `cols` is a scratch buffer of
/// `scratch` values. With enough images (two per thread) each task takes whole images and
/// multiplies on one thread; otherwise the images go one after another with multi-threaded
/// GEMMs. Either way every output element is computed the same way.
fn each_image(
    g: &Geometry,
    scratch: usize,
    (out, out_len): (&mut [f32], usize),
    (input, in_len): (&[f32], usize),
    one: impl Fn(&mut Vec<f32>, Parallelism, usize, &mut [f32], &[f32]) + Sync,
) {
    let new_cols = || vec![0f32; scratch];
    if g.n >= 2 * rayon::current_num_threads() {
        out.par_chunks_exact_mut(out_len)
            .zip(input.par_chunks_exact(in_len))
            .enumerate()
            .for_each_init(new_cols, |cols, (n, (o, i))| {
                one(cols, Parallelism::None, n, o, i)
            });
    } else {
        let mut cols = new_cols();
        for (n, (o, i)) in out
            .chunks_exact_mut(out_len)
            .zip(input.chunks_exact(in_len))
            .enumerate()
        {
            one(&mut cols, Parallelism::Rayon(0), n, o, i);
        }
    }
}

/// What [`forward`] applies to the output values `v` of channel `c` after the GEMM, image by
/// image while the image's output is in cache, in this order and each only when given:
/// `v + bias[c]`; `(v − mean[c])·scale[c] + beta[c]` (a BatchNorm with running statistics);
/// `v + residual`; `max(v, 0)`. Each step rounds as the separate tensor operation would, so the
/// result equals the composition's bit for bit.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Epilogue<'a> {
    pub(super) bias: Option<&'a [f32]>,
    /// `[mean, scale, beta]`, one value per output channel each.
    pub(super) norm: Option<[&'a [f32]; 3]>,
    /// Added element-wise: the whole `[N, Co, Ho, Wo]` output's worth.
    pub(super) residual: Option<&'a [f32]>,
    pub(super) relu: bool,
}

impl Epilogue<'_> {
    /// Applies the steps to image `n`'s output `y` (`[Co, plane]`).
    fn apply(&self, y: &mut [f32], n: usize, plane: usize) {
        let residual = self.residual.map(|r| &r[n * y.len()..(n + 1) * y.len()]);
        for (c, row) in y.chunks_exact_mut(plane).enumerate() {
            if let Some(bias) = self.bias {
                let b = bias[c];
                row.iter_mut().for_each(|v| *v += b);
            }
            if let Some([mean, scale, beta]) = self.norm {
                let (m, s, b) = (mean[c], scale[c], beta[c]);
                row.iter_mut().for_each(|v| *v = (*v - m) * s + b);
            }
            if let Some(r) = residual {
                let r = &r[c * plane..(c + 1) * plane];
                row.iter_mut().zip(r).for_each(|(v, r)| *v += r);
            }
            if self.relu {
                row.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        }
    }
}

/// The convolution of `x` (`[N, Ci, H, W]`) with `weight` (`[Co, Ci, kh, kw]`) followed by
/// `then`, as a contiguous `[N, Co, Ho, Wo]` buffer. A pointwise convolution multiplies the
/// image itself, without an im2col copy.
///
/// # Panics
/// When the epilogue's per-channel values do not fit the output (the caller checks the
/// residual's shape).
pub(super) fn forward(g: &Geometry, x: &[f32], weight: &[f32], then: &Epilogue) -> Vec<f32> {
    let (k, plane) = (g.k(), g.out_plane());
    let channels = |v: &[f32]| assert_eq!(v.len(), g.co, "conv2d: per-channel values");
    then.bias
        .into_iter()
        .chain(then.norm.into_iter().flatten())
        .for_each(channels);
    let mut y = vec![0f32; g.n * g.out_image()];
    let scratch = if g.pointwise() { 0 } else { k * plane };
    let one = |cols: &mut Vec<f32>, par, n, y: &mut [f32], x: &[f32]| {
        let cols: &[f32] = if g.pointwise() {
            x
        } else {
            im2col(g, x, cols);
            cols
        };
        matmul(
            y,
            [g.co, plane, k],
            Mat::rows(weight, k),
            Mat::rows(cols, plane),
            false,
            par,
        );
        then.apply(y, n, plane);
    };
    each_image(g, scratch, (&mut y, g.out_image()), (x, g.in_image()), one);
    y
}

/// The gradients of [`forward`] for the output gradient `dy`: `[dx, dweight, dbias]`, each
/// only when asked for.
pub(super) fn backward(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    [want_x, want_w, want_b]: [bool; 3],
) -> [Option<Vec<f32>>; 3] {
    let (k, plane) = (g.k(), g.out_plane());
    let dx = want_x.then(|| {
        let mut dx = vec![0f32; g.n * g.in_image()];
        let one = |cols: &mut Vec<f32>, par, _, dx: &mut [f32], dy: &[f32]| {
            matmul(
                cols,
                [k, plane, g.co],
                Mat::transposed(weight, k),
                Mat::rows(dy, plane),
                false,
                par,
            );
            col2im(g, cols, dx);
        };
        each_image(
            g,
            k * plane,
            (&mut dx, g.in_image()),
            (dy, g.out_image()),
            one,
        );
        dx
    });
    let dw = want_w.then(|| {
        let partials = x
            .par_chunks(IMAGES_PER_TASK * g.in_image())
            .zip(dy.par_chunks(IMAGES_PER_TASK * g.out_image()))
            .map(|(x, dy)| {
                let mut dw = vec![0f32; g.co * k];
                let mut cols = vec![0f32; k * plane];
                for (i, (x, dy)) in x
                    .chunks_exact(g.in_image())
                    .zip(dy.chunks_exact(g.out_image()))
                    .enumerate()
                {
                    im2col(g, x, &mut cols);
                    matmul(
                        &mut dw,
                        [g.co, k, plane],
                        Mat::rows(dy, plane),
                        Mat::transposed(&cols, plane),
                        i > 0,
                        Parallelism::Rayon(0),
                    );
                }
                dw
            })
            .collect();
        sum_in_order(partials, g.co * k)
    });
    let db = want_b.then(|| {
        let partials = dy
            .par_chunks(IMAGES_PER_TASK * g.out_image())
            .map(|dy| {
                let mut db = vec![0f32; g.co];
                for dy in dy.chunks_exact(g.out_image()) {
                    for (b, row) in db.iter_mut().zip(dy.chunks_exact(plane)) {
                        *b += row.iter().sum::<f32>();
                    }
                }
                db
            })
            .collect();
        sum_in_order(partials, g.co)
    });
    [dx, dw, db]
}
