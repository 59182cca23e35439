//! Attention on the CPU as a plain loop over the cached blocks of keys and values.
//!
//! Through candle, attention costs more outside the arithmetic than in it: the cached
//! keys and values copied into one tensor, the keys transposed, then a scale, a mask
//! and a softmax each writing a new `tokens x columns` tensor, and every masked score
//! computed before it is thrown away. Here the query heads that share a key/value head
//! walk the cached blocks together, where they lie ([`super::model::LayerKv`] holds a
//! layer's keys and values as the blocks they were computed in, so appending copies
//! nothing), each token computing only the columns it sees (half of a causal prompt;
//! far less under a tree mask), and the rows are shared out over the kernel pool. A
//! 400-token prompt ran 1.3x faster this way than through candle's products (see
//! docs/results.md); GPUs keep candle's.

use std::ops::Range;

use candle_core::{DType, Device, Layout, Storage, Tensor};

use super::LlmError;

/// One cached block of keys and values, as slices of their CPU storage.
struct Block<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    tokens: usize,
    /// Distance between two heads' first keys, and between two tokens' keys.
    key_strides: (usize, usize),
    value_strides: (usize, usize),
}

/// Whether this loop runs the attention on `device` (candle's products run it on a GPU).
pub(super) fn applies(device: &Device) -> bool {
    device.is_cpu()
}

/// Which columns (cached tokens, the step's own last) each query token attends to: the
/// runs of columns it sees, and the values a mask adds to their scores where it adds any.
pub(super) struct Visibility {
    columns: usize,
    runs: Vec<Vec<Range<usize>>>,
    /// `rows x columns` values added to the scores; `None` where they are all 0.
    added: Option<Vec<f32>>,
}

impl Visibility {
    /// Row `r` of `n` sees the `past` cached tokens and the step's tokens up to itself.
    pub(super) fn causal(n: usize, past: usize) -> Self {
        Self {
            columns: past + n,
            runs: (0..n)
                .map(|row| std::iter::once(0..past + row + 1).collect())
                .collect(),
            added: None,
        }
    }

    /// The visibility a mask of `n` rows gives: a row sees the columns whose value is
    /// not `-inf`, that value added to their scores.
    pub(super) fn from_mask(mask: Vec<f32>, n: usize) -> Result<Self, LlmError> {
        if n == 0 || !mask.len().is_multiple_of(n) {
            return Err(LlmError::InvalidInput(format!(
                "an attention mask of {} values for {n} tokens",
                mask.len()
            )));
        }
        let columns = mask.len() / n;
        let runs = mask
            .chunks_exact(columns.max(1))
            .map(|row| {
                runs_of(
                    row.iter()
                        .enumerate()
                        .filter(|(_, &value)| value != f32::NEG_INFINITY)
                        .map(|(column, _)| column),
                )
            })
            .collect();
        let adds = mask.iter().any(|&v| v != 0.0 && v != f32::NEG_INFINITY);
        Ok(Self {
            columns,
            runs,
            added: adds.then_some(mask),
        })
    }

    /// The same visibility with each row also blind to the columns `window` or more
    /// positions behind its own (a sliding-window layer's).
    pub(super) fn within_window(&self, past: usize, positions: &[u32], window: usize) -> Self {
        let runs = self
            .runs
            .iter()
            .zip(positions)
            .map(|(runs, &query)| {
                runs_of(runs.iter().flat_map(Clone::clone).filter(|&column| {
                    !outside_window(key_position(column, past, positions), query, window)
                }))
            })
            .collect();
        Self {
            columns: self.columns,
            runs,
            added: self.added.clone(),
        }
    }
}

/// Increasing `columns` joined into runs of adjacent ones.
fn runs_of(columns: impl Iterator<Item = usize>) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for column in columns {
        match runs.last_mut() {
            Some(run) if run.end == column => run.end += 1,
            _ => runs.push(column..column + 1),
        }
    }
    runs
}

/// Whether a query at `query` is blind to a key at `key` in a layer of `window`
/// (llama.cpp's rule: it sees the keys less than `window` positions behind it).
pub(super) fn outside_window(key: u32, query: u32, window: usize) -> bool {
    u64::from(key) + window as u64 <= u64::from(query)
}

/// The position of the key in `column` of a step at `positions` after `past` cached
/// tokens: a cache is filled in position order, so a cached key's position is its
/// column; the step's own keys have the step's positions.
pub(super) fn key_position(column: usize, past: usize, positions: &[u32]) -> u32 {
    match column.checked_sub(past) {
        Some(own) => positions.get(own).copied().unwrap_or(u32::MAX),
        None => column as u32,
    }
}

/// The attention output `[1, n, heads * head_dim]` of queries `q` (`[1, heads, n,
/// head_dim]`, rotated) over the blocks of `keys` and `values` (`[1, kv_heads, tokens,
/// head_dim]` each, the step's own tokens last), each query token attending to the
/// columns `visible` gives it. Columns it does not see are neither computed nor read.
pub(super) fn attend(
    q: &Tensor,
    keys: &[Tensor],
    values: &[Tensor],
    visible: &Visibility,
) -> Result<Tensor, LlmError> {
    let (_, heads, n, head_dim) = q.dims4()?;
    let kv_heads = keys.first().map(|k| k.dim(1)).transpose()?.unwrap_or(heads);
    if keys.len() != values.len() || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(LlmError::Metadata(
            "attention over malformed key/value blocks".into(),
        ));
    }
    let q = q.to_dtype(DType::F32)?.contiguous()?;
    let keys: Vec<Tensor> = keys.iter().map(f32_rows).collect::<Result<_, _>>()?;
    let values: Vec<Tensor> = values.iter().map(f32_rows).collect::<Result<_, _>>()?;
    let key_storage: Vec<_> = keys.iter().map(Tensor::storage_and_layout).collect();
    let value_storage: Vec<_> = values.iter().map(Tensor::storage_and_layout).collect();
    let (q_storage, q_layout) = q.storage_and_layout();
    let queries = &cpu_f32(&q_storage)?[q_layout.start_offset()..];
    let mut blocks = Vec::with_capacity(keys.len());
    for ((k, k_layout), (v, v_layout)) in key_storage.iter().zip(&value_storage) {
        let (_, k_heads, tokens, k_dim) = k_layout.shape().dims4()?;
        if (k_heads, k_dim) != (kv_heads, head_dim)
            || v_layout.shape().dims4()? != k_layout.shape().dims4()?
        {
            return Err(LlmError::Metadata(
                "key/value blocks of different shapes".into(),
            ));
        }
        blocks.push(Block {
            keys: &cpu_f32(k)?[k_layout.start_offset()..],
            values: &cpu_f32(v)?[v_layout.start_offset()..],
            tokens,
            key_strides: head_and_token_strides(k_layout),
            value_strides: head_and_token_strides(v_layout),
        });
    }
    let columns: usize = blocks.iter().map(|b| b.tokens).sum();
    if visible.runs.len() != n
        || visible.columns != columns
        || visible.runs.iter().flatten().any(|run| run.end > columns)
    {
        return Err(LlmError::InvalidInput(format!(
            "an attention mask of {} rows over {} columns for {n} tokens over {columns}",
            visible.runs.len(),
            visible.columns
        )));
    }

    let hidden = heads * head_dim;
    let mut out = vec![0f32; n * hidden];
    // The query heads that share a key/value head are one work item: each key and
    // value is read once for all of them, and the cache is what a long step reads most.
    let repeats = heads / kv_heads;
    let shared = SharedRows::new(&mut out, repeats * head_dim);
    let scale = 1.0 / (head_dim as f32).sqrt();
    candle_core::utils::barrier_pool().execute_chunked(kv_heads * n, |items| {
        crate::fault_injection::panic_if_asked("llm");
        // Scratch for every item of the chunk, allocated once: a token's scores are
        // written and read only where it sees, so nothing needs zeroing between items.
        let mut scores = vec![0f32; repeats * columns];
        let mut sums = vec![0f32; repeats];
        let mut group = Vec::with_capacity(repeats * head_dim);
        for item in items {
            let (kv_head, token) = (item / n, item % n);
            group.clear();
            for head in kv_head * repeats..(kv_head + 1) * repeats {
                let row = head * n + token;
                group.extend_from_slice(&queries[row * head_dim..(row + 1) * head_dim]);
            }
            let seen = Seen {
                runs: &visible.runs[token],
                added: visible
                    .added
                    .as_deref()
                    .map(|m| &m[token * columns..(token + 1) * columns]),
            };
            // SAFETY: the output row of this token's heads of this key/value head
            // (`token * kv_heads + kv_head`, heads in order) is this work item's alone.
            let output = unsafe { shared.row(token * kv_heads + kv_head) };
            attend_group(
                Group {
                    queries: &group,
                    head_dim,
                    kv_head,
                },
                &blocks,
                &seen,
                scale,
                (&mut scores, &mut sums),
                output,
            );
        }
    });
    Ok(Tensor::from_vec(out, (1, n, hidden), q.device())?)
}

/// The tensor as f32 with each key's values adjacent (the layout the loop reads).
fn f32_rows(t: &Tensor) -> Result<Tensor, LlmError> {
    let t = t.to_dtype(DType::F32)?;
    Ok(if t.stride().last() == Some(&1) {
        t
    } else {
        t.contiguous()?
    })
}

fn cpu_f32(storage: &Storage) -> Result<&[f32], LlmError> {
    match storage {
        Storage::Cpu(cpu) => Ok(cpu.as_slice::<f32>()?),
        _ => Err(LlmError::Metadata(
            "CPU attention over a device tensor".into(),
        )),
    }
}

fn head_and_token_strides(layout: &Layout) -> (usize, usize) {
    let stride = layout.stride();
    (stride[1], stride[2])
}

/// The query heads of one token that share key/value head `kv_head`, one after another.
struct Group<'a> {
    queries: &'a [f32],
    head_dim: usize,
    kv_head: usize,
}

/// The columns one query token sees, and what its mask adds to their scores.
struct Seen<'a> {
    runs: &'a [Range<usize>],
    added: Option<&'a [f32]>,
}

impl Seen<'_> {
    /// The parts of the seen runs inside `block` (the columns a block holds).
    fn within(&self, block: Range<usize>) -> impl Iterator<Item = Range<usize>> + '_ {
        self.runs.iter().filter_map(move |run| {
            let (start, end) = (run.start.max(block.start), run.end.min(block.end));
            (start < end).then_some(start..end)
        })
    }
}

/// A group's attention over the columns it sees, its heads' outputs written one after
/// another to `output`; `scores` (a row of every column per head) and `sums` (one per
/// head) are scratch space.
fn attend_group(
    group: Group,
    blocks: &[Block],
    seen: &Seen,
    scale: f32,
    (scores, sums): (&mut [f32], &mut [f32]),
    output: &mut [f32],
) {
    let head_dim = group.head_dim;
    let rows = group.queries.len() / head_dim;
    let columns = scores.len() / rows;
    let wide = avx2::usable(head_dim, rows);
    let mut first = 0;
    for block in blocks {
        let stride = block.key_strides.1;
        for run in seen.within(first..first + block.tokens) {
            let keys =
                &block.keys[group.kv_head * block.key_strides.0 + (run.start - first) * stride..];
            if wide {
                avx2::scores(
                    (group.queries, head_dim),
                    keys,
                    stride,
                    run.len(),
                    &mut scores[run.start..],
                    columns,
                );
                continue;
            }
            for (r, query) in group.queries.chunks_exact(head_dim).enumerate() {
                for t in 0..run.len() {
                    let key = &keys[t * stride..][..head_dim];
                    scores[r * columns + run.start + t] =
                        query.iter().zip(key).map(|(q, k)| q * k).sum::<f32>();
                }
            }
        }
        first += block.tokens;
    }
    sums.fill(0.0);
    for (row, sum) in scores.chunks_exact_mut(columns).zip(sums.iter_mut()) {
        let mut max = f32::NEG_INFINITY;
        for run in seen.runs {
            for column in run.clone() {
                let s = row[column] * scale + seen.added.map_or(0.0, |m| m[column]);
                row[column] = s;
                max = max.max(s);
            }
        }
        for run in seen.runs {
            for s in &mut row[run.clone()] {
                *s = (*s - max).exp();
                *sum += *s;
            }
        }
    }
    output.fill(0.0);
    let mut first = 0;
    for block in blocks {
        let stride = block.value_strides.1;
        for run in seen.within(first..first + block.tokens) {
            let values = &block.values
                [group.kv_head * block.value_strides.0 + (run.start - first) * stride..];
            if wide {
                avx2::weighted_sum(
                    (&scores[run.start..], columns),
                    values,
                    stride,
                    run.len(),
                    (output, head_dim),
                );
                continue;
            }
            for (r, out) in output.chunks_exact_mut(head_dim).enumerate() {
                for t in 0..run.len() {
                    let weight = scores[r * columns + run.start + t];
                    let value = &values[t * stride..][..head_dim];
                    for (o, &v) in out.iter_mut().zip(value) {
                        *o += weight * v;
                    }
                }
            }
        }
        first += block.tokens;
    }
    // A token that sees nothing keeps an output of zeros rather than dividing by 0.
    for (out, &sum) in output.chunks_exact_mut(head_dim).zip(sums.iter()) {
        if sum > 0.0 {
            for o in out {
                *o /= sum;
            }
        }
    }
}

/// The two loops of [`attend_group`] in AVX2 with FMA, for heads a multiple of 16 wide
/// and groups of up to [`MAX_ROWS`] heads: each key and value loaded once for them all.
mod avx2 {
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    /// Query heads a group may have to take these loops.
    pub(super) const MAX_ROWS: usize = 4;

    /// Calls the kernel compiled for `rows` rows (1 to [`MAX_ROWS`]).
    macro_rules! by_rows {
        ($rows:expr, $kernel:ident($($arg:expr),*)) => {
            match $rows {
                1 => $kernel::<1>($($arg),*),
                2 => $kernel::<2>($($arg),*),
                3 => $kernel::<3>($($arg),*),
                _ => $kernel::<4>($($arg),*),
            }
        };
    }

    /// Whether this CPU, head width and group size take these loops.
    pub(super) fn usable(head_dim: usize, rows: usize) -> bool {
        cfg!(target_arch = "x86_64")
            && head_dim.is_multiple_of(16)
            && head_dim > 0
            && (1..=MAX_ROWS).contains(&rows)
            && crate::simd::has_avx2_fma()
    }

    /// Whether `len` values hold `count` runs of `width` values, `stride` apart.
    fn holds(len: usize, count: usize, stride: usize, width: usize) -> bool {
        count == 0 || width == 0 || len >= (count - 1) * stride + width
    }

    /// For each query row `r` (of `queries`, `head_dim` wide) and key `t` (at
    /// `keys[t * stride..]`, `tokens` of them): `out[r * out_stride + t] = query · key`.
    pub(super) fn scores(
        (queries, head_dim): (&[f32], usize),
        keys: &[f32],
        stride: usize,
        tokens: usize,
        out: &mut [f32],
        out_stride: usize,
    ) {
        let rows = queries.len() / head_dim.max(1);
        assert!(
            usable(head_dim, rows),
            "the AVX2 scores need AVX2, FMA and a head of 16s"
        );
        assert!(
            holds(keys.len(), tokens, stride, head_dim)
                && holds(out.len(), rows, out_stride, tokens),
            "keys or scores out of range"
        );
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA, and every read and write lies inside its
        // slice (all asserted above).
        unsafe {
            by_rows!(
                rows,
                scores_kernel(queries, keys, stride, tokens, out, out_stride)
            );
        }
    }

    /// For each output row `r` (of `out`, `head_dim` wide, one per weight row):
    /// `out_r += Σ_t weights[r * weight_stride + t] * values[t * stride..][..head_dim]`.
    pub(super) fn weighted_sum(
        (weights, weight_stride): (&[f32], usize),
        values: &[f32],
        stride: usize,
        tokens: usize,
        (out, head_dim): (&mut [f32], usize),
    ) {
        let rows = out.len() / head_dim.max(1);
        assert!(
            usable(head_dim, rows),
            "the AVX2 sum needs AVX2, FMA and heads of 16s"
        );
        assert!(
            holds(values.len(), tokens, stride, head_dim)
                && holds(weights.len(), rows, weight_stride, tokens),
            "values or weights out of range"
        );
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for `scores`.
        unsafe {
            by_rows!(
                rows,
                weighted_sum_kernel(weights, weight_stride, values, stride, tokens, out)
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores_kernel<const R: usize>(
        queries: &[f32],
        keys: &[f32],
        stride: usize,
        tokens: usize,
        out: &mut [f32],
        out_stride: usize,
    ) {
        let head_dim = queries.len() / R;
        let q = queries.as_ptr();
        let o = out.as_mut_ptr();
        for t in 0..tokens {
            let k = keys.as_ptr().add(t * stride);
            let mut even = [_mm256_setzero_ps(); R];
            let mut odd = [_mm256_setzero_ps(); R];
            for c in (0..head_dim).step_by(16) {
                let k_even = _mm256_loadu_ps(k.add(c));
                let k_odd = _mm256_loadu_ps(k.add(c + 8));
                for r in 0..R {
                    let row = q.add(r * head_dim + c);
                    even[r] = _mm256_fmadd_ps(_mm256_loadu_ps(row), k_even, even[r]);
                    odd[r] = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(8)), k_odd, odd[r]);
                }
            }
            for r in 0..R {
                let sum = _mm256_add_ps(even[r], odd[r]);
                let half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
                let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
                *o.add(r * out_stride + t) = _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)));
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weighted_sum_kernel<const R: usize>(
        weights: &[f32],
        weight_stride: usize,
        values: &[f32],
        stride: usize,
        tokens: usize,
        out: &mut [f32],
    ) {
        // Sixteen values of every row at a time: R x 2 registers of sums, each value
        // loaded once for all rows.
        let head_dim = out.len() / R;
        let o = out.as_mut_ptr();
        let w = weights.as_ptr();
        for first in (0..head_dim).step_by(16) {
            let mut low = [_mm256_setzero_ps(); R];
            let mut high = [_mm256_setzero_ps(); R];
            for r in 0..R {
                low[r] = _mm256_loadu_ps(o.add(r * head_dim + first));
                high[r] = _mm256_loadu_ps(o.add(r * head_dim + first + 8));
            }
            for t in 0..tokens {
                let v = values.as_ptr().add(t * stride + first);
                let (v_low, v_high) = (_mm256_loadu_ps(v), _mm256_loadu_ps(v.add(8)));
                for r in 0..R {
                    let weight = _mm256_set1_ps(*w.add(r * weight_stride + t));
                    low[r] = _mm256_fmadd_ps(weight, v_low, low[r]);
                    high[r] = _mm256_fmadd_ps(weight, v_high, high[r]);
                }
            }
            for r in 0..R {
                _mm256_storeu_ps(o.add(r * head_dim + first), low[r]);
                _mm256_storeu_ps(o.add(r * head_dim + first + 8), high[r]);
            }
        }
    }
}

/// An output of rows written by several pool workers, each row by one only.
struct SharedRows {
    ptr: *mut f32,
    rows: usize,
    width: usize,
}

// SAFETY: rows are only reached through `row`, whose callers promise that no row is
// taken by two workers; the buffer outlives the pool call that uses it.
unsafe impl Sync for SharedRows {}

impl SharedRows {
    fn new(out: &mut [f32], width: usize) -> Self {
        Self {
            ptr: out.as_mut_ptr(),
            rows: out.len() / width,
            width,
        }
    }

    /// # Safety
    /// No other worker may take row `index` during the same call.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, index: usize) -> &mut [f32] {
        assert!(index < self.rows, "output row out of range");
        // SAFETY: in bounds (checked above) and not shared (the caller's promise).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(index * self.width), self.width) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        let len = shape.0 * shape.1 * shape.2 * shape.3;
        let mut state = seed;
        let values: Vec<f32> = (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    /// Attention the plain way: grouped heads repeated, one product, mask, softmax.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let (_, heads, n, head_dim) = q.dims4().unwrap();
        let repeats = heads / k.dim(1).unwrap();
        let repeat = |t: &Tensor| {
            let (b, h, s, d) = t.dims4().unwrap();
            t.unsqueeze(2)
                .unwrap()
                .broadcast_as((b, h, repeats, s, d))
                .unwrap()
                .reshape((b, h * repeats, s, d))
                .unwrap()
        };
        let scores =
            (q.matmul(&repeat(k).t().unwrap()).unwrap() / (head_dim as f64).sqrt()).unwrap();
        let scores = match mask {
            Some(m) => scores.broadcast_add(m).unwrap(),
            None => scores,
        };
        candle_nn::ops::softmax_last_dim(&scores)
            .unwrap()
            .matmul(&repeat(v))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((1, n, heads * head_dim))
            .unwrap()
    }

    fn largest_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn blocks_strided_views_and_masks_give_the_plain_attention() {
        // 6 query heads over 2 key/value heads, 3 query tokens, 37 cached tokens in
        // three blocks, the first a narrowed (strided) view of a longer tensor; heads
        // of 20 take the portable loops, heads of 32 the AVX2 ones where the CPU has them.
        for head_dim in [20, 32] {
            attends_as_the_plain_way(head_dim);
        }
    }

    fn attends_as_the_plain_way(head_dim: usize) {
        let (heads, kv_heads, n) = (6, 2, 3);
        let q = random((1, heads, n, head_dim), 1);
        let long_k = random((1, kv_heads, 30, head_dim), 2);
        let long_v = random((1, kv_heads, 30, head_dim), 3);
        let keys = [
            long_k.narrow(2, 0, 23).unwrap(),
            random((1, kv_heads, 11, head_dim), 4),
            random((1, kv_heads, n, head_dim), 5),
        ];
        let values = [
            long_v.narrow(2, 0, 23).unwrap(),
            random((1, kv_heads, 11, head_dim), 6),
            random((1, kv_heads, n, head_dim), 7),
        ];
        let columns = 23 + 11 + n;
        // Holes in the middle of rows (as a tree mask makes), runs across blocks, and
        // values a mask adds to the scores.
        let mask: Vec<f32> = (0..n * columns)
            .map(|i| match (i * 7) % 5 {
                0 => f32::NEG_INFINITY,
                1 => -1.5,
                _ => 0.0,
            })
            .collect();
        let k = Tensor::cat(&keys, 2).unwrap();
        let v = Tensor::cat(&values, 2).unwrap();
        let as_tensor =
            |mask: &[f32]| Tensor::from_slice(mask, (n, columns), &Device::Cpu).unwrap();

        let visible = Visibility::from_mask(mask.clone(), n).unwrap();
        let ours = attend(&q, &keys, &values, &visible).unwrap();
        let plain = reference(&q, &k, &v, Some(&as_tensor(&mask)));
        assert!(largest_difference(&ours, &plain) < 1e-5);

        let causal = crate::llm::model::causal_mask(n, columns - n, &Device::Cpu).unwrap();
        let ours = attend(&q, &keys, &values, &Visibility::causal(n, columns - n)).unwrap();
        let plain = reference(&q, &k, &v, Some(&causal));
        assert!(largest_difference(&ours, &plain) < 1e-5);

        let everything = Visibility::from_mask(vec![0.0; n * columns], n).unwrap();
        let ours = attend(&q, &keys, &values, &everything).unwrap();
        let plain = reference(&q, &k, &v, None);
        assert!(largest_difference(&ours, &plain) < 1e-5);
    }

    #[test]
    fn the_avx2_loops_compute_the_portable_sums() {
        for rows in 1..=avx2::MAX_ROWS {
            let (head_dim, tokens, stride) = (32, 9, 40);
            if !avx2::usable(head_dim, rows) {
                return;
            }
            let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let queries = flat(random((1, 1, rows, head_dim), 8));
            let keys = flat(random((1, 1, tokens, stride), 9));
            let weights = flat(random((1, 1, rows, tokens), 10));
            let mut scores = vec![0f32; rows * tokens];
            avx2::scores(
                (&queries, head_dim),
                &keys,
                stride,
                tokens,
                &mut scores,
                tokens,
            );
            let mut sums = vec![0.5f32; rows * head_dim];
            avx2::weighted_sum(
                (&weights, tokens),
                &keys,
                stride,
                tokens,
                (&mut sums, head_dim),
            );
            for r in 0..rows {
                let query = &queries[r * head_dim..][..head_dim];
                for t in 0..tokens {
                    let key = &keys[t * stride..][..head_dim];
                    let expected: f32 = query.iter().zip(key).map(|(q, k)| q * k).sum();
                    assert!(
                        (scores[r * tokens + t] - expected).abs() < 1e-5,
                        "score {r} {t}"
                    );
                }
                for d in 0..head_dim {
                    let expected: f32 = 0.5
                        + (0..tokens)
                            .map(|t| weights[r * tokens + t] * keys[t * stride + d])
                            .sum::<f32>();
                    assert!(
                        (sums[r * head_dim + d] - expected).abs() < 1e-5,
                        "value {r} {d}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_mask_of_the_wrong_size_is_refused() {
        let q = random((1, 2, 1, 8), 11);
        let k = random((1, 1, 4, 8), 12);
        let v = random((1, 1, 4, 8), 13);
        let three_columns = Visibility::from_mask(vec![0.0; 3], 1).unwrap();
        assert!(attend(&q, &[k], &[v], &three_columns).is_err());
        assert!(Visibility::from_mask(vec![0.0; 3], 2).is_err());
    }

    #[test]
    fn a_window_hides_the_columns_far_enough_behind_each_row() {
        // Three cached tokens, then a step of two at positions 3 and 4, window 2.
        let windowed = Visibility::causal(2, 3).within_window(3, &[3, 4], 2);
        assert_eq!(windowed.runs, vec![vec![2..4], vec![3..5]]);
        // Tree-masked continuations of one place share a position, and so a window.
        let inf = f32::NEG_INFINITY;
        let tree = Visibility::from_mask(vec![0.0, 0.0, 0.0, inf, 0.0, 0.0, inf, 0.0], 2)
            .unwrap()
            .within_window(2, &[2, 2], 2);
        assert_eq!(tree.runs, vec![vec![1..3], vec![1..2, 3..4]]);
    }
}
