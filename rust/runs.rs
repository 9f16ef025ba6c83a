//! Run watermarks: which numbered runs (batches, epochs, ...) are safely done.
//!
//! Run numbers are `i64`. Given the last run known to be contiguous-complete and the set of
//! runs that succeeded since (in any order, with duplicates):
//!
//! * `last_contiguous_run` advances `last` while `last + 1` succeeded;
//! * `max_attempted_run` is the high-water mark of attempted runs, never decreasing;
//! * `run_gaps` lists the runs in `last + 1 ..= bound` that did not succeed.
//!
//! All three are O(n) (plus the size of the window for `run_gaps`), using a bitmap over the
//! window above `last` rather than a hash set or a sort.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::checksum::{capacity_hint, type_name};
use crate::errors::NativeError;

/// Widest `bound - last` that `run_gaps` accepts.
pub const MAX_GAP_WINDOW: i128 = 1_000_000_000;
/// Most runs `run_gaps` returns. The result is a Python list of ints (about 36 bytes each), so
/// without a bound `run_gaps(0, [], 10**9)` asked for tens of gigabytes and the failed
/// allocation aborted the interpreter.
pub const MAX_GAPS: usize = 1_000_000;

/// A fixed-size bitmap marking offsets `0..len` above some base.
struct Bitmap {
    words: Vec<u64>,
    len: usize,
}

impl Bitmap {
    fn new(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    /// Like [`Bitmap::new`], failing instead of aborting when the memory is not available.
    fn try_new(len: usize) -> Result<Self, NativeError> {
        let n_words = len.div_ceil(64);
        let mut words = Vec::new();
        words.try_reserve_exact(n_words).map_err(|_| {
            NativeError::invalid(format!("run_gaps: cannot allocate a window of {len} runs"))
        })?;
        words.resize(n_words, 0);
        Ok(Self { words, len })
    }

    /// Number of marked offsets.
    fn count_marked(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Marks every `v` in `values` with `base < v <= base + len`, at offset `v - base - 1`.
    fn mark_above(&mut self, base: i64, values: impl Iterator<Item = i64>) {
        for v in values {
            self.mark_one(base, v);
        }
    }

    /// Marks `v` if `base < v <= base + len`, at offset `v - base - 1`.
    #[inline]
    fn mark_one(&mut self, base: i64, v: i64) {
        if v > base {
            // v > base, so the true difference is in 1..=u64::MAX: no wrap-around.
            let off = (v as u64).wrapping_sub(base as u64) - 1;
            if off < self.len as u64 {
                if let Some(word) = self.words.get_mut((off / 64) as usize) {
                    *word |= 1 << (off % 64);
                }
            }
        }
    }

    /// Number of marked offsets before the first unmarked one.
    fn leading_marked(&self) -> usize {
        let mut count = 0usize;
        for &word in &self.words {
            if word == u64::MAX {
                count += 64;
            } else {
                count += word.trailing_ones() as usize;
                break;
            }
        }
        count.min(self.len)
    }

    /// Unmarked offsets, ascending.
    fn unmarked(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(move |(i, &word)| {
            let mut free = !word;
            let start = i * 64;
            let valid = self.len.saturating_sub(start);
            if valid < 64 {
                free &= (1u64 << valid) - 1;
            }
            std::iter::from_fn(move || {
                if free == 0 {
                    return None;
                }
                let bit = free.trailing_zeros() as usize;
                free &= free - 1;
                Some(start + bit)
            })
        })
    }
}

/// Advances `last` while `last + 1` is in `successful`; returns the final value.
pub fn last_contiguous_run(last: i64, successful: &[i64]) -> i64 {
    last_contiguous_run_of(last, successful.iter().copied())
}

/// [`last_contiguous_run`] over any sized sequence of run numbers (such as a buffer read in
/// place).
pub fn last_contiguous_run_of(last: i64, successful: impl ExactSizeIterator<Item = i64>) -> i64 {
    // A run of n distinct successors can only use values in last+1 ..= last+n.
    let mut bitmap = Bitmap::new(successful.len());
    bitmap.mark_above(last, successful);
    advance(last, &bitmap)
}

/// `last` advanced by the marked offsets before the first unmarked one.
fn advance(last: i64, bitmap: &Bitmap) -> i64 {
    let run = bitmap.leading_marked();
    // `run` values above `last` were found in `successful`, so the sum is an i64.
    let advanced = i128::from(last) + run as i128;
    i64::try_from(advanced).unwrap_or(i64::MAX)
}

/// `max(current, *attempted)`.
pub fn max_attempted_run(current: i64, attempted: &[i64]) -> i64 {
    attempted.iter().copied().fold(current, i64::max)
}

/// The runs in `last + 1 ..= bound` missing from `successful`, ascending.
///
/// Fails with `InvalidArgument` if `bound - last` exceeds [`MAX_GAP_WINDOW`], or if more
/// than [`MAX_GAPS`] runs are missing. Every allocation is bounded by the length of
/// `successful` plus a constant: the window can only be wider than `successful.len() +
/// MAX_GAPS` if more than `MAX_GAPS` runs are missing, which is refused before the bitmap is
/// built.
pub fn run_gaps(last: i64, successful: &[i64], bound: i64) -> Result<Vec<i64>, NativeError> {
    run_gaps_of(last, successful.iter().copied(), bound)
}

/// [`run_gaps`] over any sized sequence of run numbers.
pub fn run_gaps_of(
    last: i64,
    successful: impl ExactSizeIterator<Item = i64>,
    bound: i64,
) -> Result<Vec<i64>, NativeError> {
    let width = i128::from(bound) - i128::from(last);
    if width <= 0 {
        return Ok(Vec::new());
    }
    if width > MAX_GAP_WINDOW {
        return Err(NativeError::invalid(format!(
            "run_gaps window too large: bound - last = {width} exceeds {MAX_GAP_WINDOW}"
        )));
    }
    // At most successful.len() runs of the window are present, so at least
    // width - successful.len() are missing.
    let at_least_missing = width - successful.len() as i128;
    if at_least_missing > MAX_GAPS as i128 {
        return Err(too_many_gaps(at_least_missing));
    }
    let width = usize::try_from(width)
        .map_err(|_| NativeError::invalid(format!("run_gaps window of {width} is too large")))?;
    let mut bitmap = Bitmap::try_new(width)?;
    bitmap.mark_above(last, successful);
    let missing = width - bitmap.count_marked();
    if missing > MAX_GAPS {
        return Err(too_many_gaps(missing as i128));
    }
    let mut out = Vec::new();
    out.try_reserve_exact(missing)
        .map_err(|_| NativeError::invalid(format!("run_gaps: cannot allocate {missing} runs")))?;
    let first = i128::from(last) + 1;
    // Every offset is < width, so first + offset <= bound fits in an i64.
    out.extend(
        bitmap
            .unmarked()
            .filter_map(|off| i64::try_from(first + off as i128).ok()),
    );
    Ok(out)
}

fn too_many_gaps(missing: i128) -> NativeError {
    NativeError::invalid(format!(
        "run_gaps result too large: {missing} runs are missing, more than the limit of {MAX_GAPS}; \
         narrow the window (bound - last)"
    ))
}

#[inline]
fn extract_one(item: &Bound<'_, PyAny>, what: &str, index: usize) -> PyResult<i64> {
    match item.extract::<i64>() {
        Ok(n) => Ok(n),
        Err(err) => Err(bad_run_number(item, what, index, &err)),
    }
}

/// The error for an item that is not an `i64` (kept out of line: the hot loop stays small).
#[cold]
#[inline(never)]
fn bad_run_number(item: &Bound<'_, PyAny>, what: &str, index: usize, err: &PyErr) -> PyErr {
    if err.is_instance_of::<PyOverflowError>(item.py()) {
        PyValueError::new_err(format!(
            "{what}[{index}] is outside the 64-bit run number range"
        ))
    } else {
        PyTypeError::new_err(format!(
            "{what}[{index}] must be an int, got {}",
            type_name(item)
        ))
    }
}

fn extract_tuple(tuple: &Bound<'_, PyTuple>, what: &str) -> PyResult<Vec<i64>> {
    let mut out = Vec::with_capacity(tuple.len());
    for (i, item) in tuple.iter_borrowed().enumerate() {
        out.push(extract_one(&item, what, i)?);
    }
    Ok(out)
}

/// How far ahead [`read_exact_ints`] prefetches the int objects of a list.
const PREFETCH_AHEAD: usize = 16;

/// Reads a list made only of `int`s (exactly, not subclasses) that fit an `i64`, by index,
/// handing each to `sink` and prefetching the int objects [`PREFETCH_AHEAD`] items ahead;
/// false as soon as an item is anything else (the caller then takes the general path, which
/// converts or reports it).
///
/// The list's items are wherever the ints were allocated: for run numbers collected as runs
/// complete, in random order, so each read is a cache miss unless prefetched. This is the
/// crate's one unsafe function: the limited API has no safe way to see an item's address
/// without touching the item (pyo3's `get_item` increfs it, which is the cache miss).
#[allow(unsafe_code)]
fn for_each_exact_int(list: &Bound<'_, PyList>, mut sink: impl FnMut(i64)) -> bool {
    let ptr = list.as_ptr();
    let len = list.len();
    // SAFETY: we hold the GIL for the whole loop and run no Python code in it (the checks
    // and conversions below only read an exact int; nothing is allocated on the Python
    // heap, so no GC runs either), so the list and its items cannot change or be freed: each
    // index below `len` is in bounds and PyList_GetItem returns a valid borrowed pointer. A
    // prefetch is only a hint: it never faults, whatever the address.
    unsafe {
        for index in 0..len {
            #[cfg(target_arch = "x86_64")]
            if let Some(ahead) = index.checked_add(PREFETCH_AHEAD).filter(|&i| i < len) {
                let item = ffi::PyList_GetItem(ptr, ahead as ffi::Py_ssize_t);
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(item.cast());
            }
            let item = ffi::PyList_GetItem(ptr, index as ffi::Py_ssize_t);
            if item.is_null() || ffi::PyLong_CheckExact(item) == 0 {
                return false;
            }
            let mut overflow = 0;
            let value = ffi::PyLong_AsLongLongAndOverflow(item, &mut overflow);
            if overflow != 0 {
                return false;
            }
            sink(value);
        }
    }
    true
}

/// The values of a list of plain ints (see [`for_each_exact_int`]), or None.
fn read_exact_ints(list: &Bound<'_, PyList>) -> Option<Vec<i64>> {
    let mut out = Vec::with_capacity(list.len());
    for_each_exact_int(list, |v| out.push(v)).then_some(out)
}

/// Extracts a list, tuple or other iterable of ints (a set works too).
///
/// A list of plain ints is read by index with prefetching ([`read_exact_ints`]); any other
/// list and other iterables go through the iterator protocol.
fn extract_runs(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i64>> {
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        return extract_tuple(tuple, what);
    }
    let not_ints = || {
        PyTypeError::new_err(format!(
            "{what} must be a sequence of ints, got {}",
            type_name(obj)
        ))
    };
    let capacity = match obj.cast::<PyList>() {
        Ok(list) => {
            if let Some(values) = read_exact_ints(list) {
                return Ok(values);
            }
            list.len()
        }
        Err(_) if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() => {
            return Err(not_ints())
        }
        // Any other iterable reports its own length, which may be anything: only a hint.
        Err(_) => capacity_hint(obj),
    };
    let iter = obj.try_iter().map_err(|_| not_ints())?;
    let mut out = Vec::with_capacity(capacity);
    for (i, item) in iter.enumerate() {
        out.push(extract_one(&item?, what, i)?);
    }
    Ok(out)
}

/// The run numbers of a C-contiguous buffer of 64-bit signed ints (`array('q')`, a numpy
/// `int64` array, ...), read in place, or None if `obj` is not one.
fn int64_buffer(obj: &Bound<'_, PyAny>) -> Option<PyBuffer<i64>> {
    if obj.is_instance_of::<PyList>()
        || obj.is_instance_of::<PyTuple>()
        || obj.is_instance_of::<PyBytes>()
    {
        return None;
    }
    PyBuffer::<i64>::get(obj)
        .ok()
        .filter(|b| b.is_c_contiguous())
}

/// `last_contiguous_run(last, successful)` -> the advanced watermark.
#[pyfunction]
#[pyo3(name = "last_contiguous_run")]
pub fn py_last_contiguous_run(
    py: Python<'_>,
    last: i64,
    successful: &Bound<'_, PyAny>,
) -> PyResult<i64> {
    if let Some(buffer) = int64_buffer(successful) {
        // Read in place, attached: the buffer's owner may let other threads write it.
        if let Some(cells) = buffer.as_slice(py) {
            return Ok(last_contiguous_run_of(last, cells.iter().map(|c| c.get())));
        }
    }
    if let Ok(list) = successful.cast::<PyList>() {
        // Mark the bitmap as the ints are read: no intermediate vector.
        let mut bitmap = Bitmap::new(list.len());
        if for_each_exact_int(list, |v| bitmap.mark_one(last, v)) {
            return Ok(advance(last, &bitmap));
        }
    }
    let successful = extract_runs(successful, "successful")?;
    Ok(py.detach(|| last_contiguous_run(last, &successful)))
}

/// `max_attempted_run(current, attempted)` -> `max(current, *attempted)`.
#[pyfunction]
#[pyo3(name = "max_attempted_run")]
pub fn py_max_attempted_run(
    py: Python<'_>,
    current: i64,
    attempted: &Bound<'_, PyAny>,
) -> PyResult<i64> {
    if let Some(buffer) = int64_buffer(attempted) {
        if let Some(cells) = buffer.as_slice(py) {
            return Ok(cells.iter().map(|c| c.get()).fold(current, i64::max));
        }
    }
    let attempted = extract_runs(attempted, "attempted")?;
    Ok(py.detach(|| max_attempted_run(current, &attempted)))
}

/// `run_gaps(last, successful, bound)` -> missing runs in `last + 1 ..= bound`, ascending.
#[pyfunction]
#[pyo3(name = "run_gaps")]
pub fn py_run_gaps(
    py: Python<'_>,
    last: i64,
    successful: &Bound<'_, PyAny>,
    bound: i64,
) -> PyResult<Vec<i64>> {
    if let Some(buffer) = int64_buffer(successful) {
        if let Some(cells) = buffer.as_slice(py) {
            return Ok(run_gaps_of(last, cells.iter().map(|c| c.get()), bound)?);
        }
    }
    let successful = extract_runs(successful, "successful")?;
    Ok(py.detach(|| run_gaps(last, &successful, bound))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn reference_last(mut last: i64, successful: &[i64]) -> i64 {
        let set: HashSet<i64> = successful.iter().copied().collect();
        while last < i64::MAX && set.contains(&(last + 1)) {
            last += 1;
        }
        last
    }

    fn reference_gaps(last: i64, successful: &[i64], bound: i64) -> Vec<i64> {
        let set: HashSet<i64> = successful.iter().copied().collect();
        if bound <= last {
            return Vec::new();
        }
        (last + 1..=bound).filter(|r| !set.contains(r)).collect()
    }

    /// A small deterministic pseudo-random generator (xorshift64*).
    fn lcg(seed: &mut u64) -> u64 {
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn documented_examples() {
        assert_eq!(last_contiguous_run(100, &[101, 102, 103]), 103);
        assert_eq!(last_contiguous_run(103, &[104, 106, 107]), 104);
        assert_eq!(last_contiguous_run(104, &[107, 108, 109]), 104);
        assert_eq!(last_contiguous_run(5, &[]), 5);
    }

    #[test]
    fn unordered_duplicates_and_negatives() {
        assert_eq!(last_contiguous_run(-3, &[0, -2, -1, -2, 1, 3, -10]), 1);
        assert_eq!(last_contiguous_run(0, &[2, 1, 1, 1]), 2);
        assert_eq!(last_contiguous_run(10, &[1, 2, 3]), 10);
    }

    #[test]
    fn extremes_do_not_overflow() {
        assert_eq!(
            last_contiguous_run(i64::MAX, &[i64::MAX, i64::MIN]),
            i64::MAX
        );
        assert_eq!(
            last_contiguous_run(i64::MAX - 2, &[i64::MAX, i64::MAX - 1]),
            i64::MAX
        );
        assert_eq!(last_contiguous_run(i64::MIN, &[i64::MIN + 1]), i64::MIN + 1);
        assert_eq!(
            run_gaps(i64::MAX - 2, &[i64::MAX], i64::MAX).expect("gaps"),
            vec![i64::MAX - 1]
        );
        assert!(run_gaps(i64::MIN, &[], i64::MAX).is_err());
    }

    #[test]
    fn max_attempted() {
        assert_eq!(max_attempted_run(5, &[]), 5);
        assert_eq!(max_attempted_run(5, &[1, 9, 3]), 9);
        assert_eq!(max_attempted_run(5, &[1, 2]), 5);
        assert_eq!(max_attempted_run(-5, &[-7, -6]), -5);
    }

    #[test]
    fn gaps() {
        assert_eq!(
            run_gaps(100, &[101, 103, 106], 107).expect("gaps"),
            vec![102, 104, 105, 107]
        );
        assert_eq!(
            run_gaps(100, &[101, 102], 102).expect("gaps"),
            Vec::<i64>::new()
        );
        assert_eq!(run_gaps(100, &[], 100).expect("gaps"), Vec::<i64>::new());
        assert_eq!(run_gaps(100, &[], 90).expect("gaps"), Vec::<i64>::new());
        assert_eq!(run_gaps(-2, &[0], 1).expect("gaps"), vec![-1, 1]);
        assert!(matches!(
            run_gaps(0, &[], 1_000_000_001),
            Err(NativeError::InvalidArgument(_))
        ));
        assert_eq!(run_gaps(0, &[], 130).expect("gaps").len(), 130);
    }

    #[test]
    fn matches_reference_on_random_inputs() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..300 {
            let n = (lcg(&mut seed) % 200) as usize;
            let last = (lcg(&mut seed) % 50) as i64 - 25;
            let spread = 1 + (lcg(&mut seed) % 300) as i64;
            let values: Vec<i64> = (0..n)
                .map(|_| last - 20 + (lcg(&mut seed) % spread as u64) as i64)
                .collect();
            let bound = last - 5 + (lcg(&mut seed) % 320) as i64;
            assert_eq!(
                last_contiguous_run(last, &values),
                reference_last(last, &values),
                "round {round}"
            );
            assert_eq!(
                run_gaps(last, &values, bound).expect("gaps"),
                reference_gaps(last, &values, bound),
                "round {round}"
            );
        }
    }

    #[test]
    fn huge_windows_are_refused_without_allocating() {
        // Used to collect 10**9 i64s (8 GB): the failed allocation aborted the process.
        let msg = match run_gaps(0, &[], 1_000_000_000) {
            Err(NativeError::InvalidArgument(msg)) => msg,
            other => panic!("expected InvalidArgument, got {other:?}"),
        };
        assert!(msg.contains("too large"), "{msg}");
        assert!(run_gaps(0, &[], MAX_GAPS as i64 + 1).is_err());
        assert_eq!(
            run_gaps(0, &[], MAX_GAPS as i64).expect("gaps").len(),
            MAX_GAPS
        );
        // A wide window is fine when few runs are missing from it.
        let present: Vec<i64> = (1..=2_000_000).collect();
        assert_eq!(
            run_gaps(0, &present, 2_000_003).expect("gaps"),
            vec![2_000_001, 2_000_002, 2_000_003]
        );
        // Duplicates do not count as present runs twice.
        let dups = vec![1; 2_000_000];
        assert!(run_gaps(0, &dups, 2_000_000).is_err());
    }

    #[test]
    fn long_contiguous_run() {
        let values: Vec<i64> = (1..=100_000).rev().collect();
        assert_eq!(last_contiguous_run(0, &values), 100_000);
        assert_eq!(
            run_gaps(0, &values, 100_010).expect("gaps"),
            (100_001..=100_010).collect::<Vec<_>>()
        );
    }
}
