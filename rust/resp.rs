//! Redis protocol helpers: RESP command batches and Redis Cluster hash slots.
//!
//! `encode_commands` writes each command as a RESP array of bulk strings
//! (`*N\r\n$len\r\narg\r\n...`), the way redis-py packs a pipeline: `bytes` as is, `str` as
//! UTF-8, `int` in decimal, `float` as its Python `repr`; `bool` and anything else is a
//! `TypeError`.
//!
//! `hash_slot` is the Redis Cluster key slot: CRC16-XMODEM (poly 0x1021, init 0) of the key,
//! or of its hash tag (the bytes between the first `{` and the first `}` after it, when that
//! is non-empty), modulo 16384.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::checksum::{capacity_hint, type_name};
use crate::errors::NativeError;

/// Number of slots in a Redis Cluster.
pub const SLOT_COUNT: u16 = 16384;

const fn crc16_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static CRC16_TABLE: [u16; 256] = crc16_table();

/// CRC16-XMODEM (CCITT polynomial 0x1021, initial value 0, no reflection, no final xor).
pub fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[usize::from(((crc >> 8) as u8) ^ b)]
    })
}

/// The part of `key` that is hashed: its hash tag if it has a non-empty one, else all of it.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        let rest = &key[open + 1..];
        if let Some(close) = rest.iter().position(|&b| b == b'}') {
            if close > 0 {
                return &rest[..close];
            }
        }
    }
    key
}

/// The Redis Cluster slot of `key`.
pub fn slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) % SLOT_COUNT
}

fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Encodes commands (each a list of arguments) as concatenated RESP arrays of bulk strings.
///
/// Fails with `InvalidArgument` on an empty command.
pub fn encode<C, A>(commands: &[C]) -> Result<Vec<u8>, NativeError>
where
    C: AsRef<[A]>,
    A: AsRef<[u8]>,
{
    let mut size = 0usize;
    for (index, command) in commands.iter().enumerate() {
        let args = command.as_ref();
        if args.is_empty() {
            return Err(NativeError::invalid(format!(
                "command {index} is empty; a command needs at least its name"
            )));
        }
        // "*N\r\n" plus, per argument, "$len\r\n" "arg" "\r\n" (lengths have at most 20 digits).
        size = size.saturating_add(23);
        for arg in args {
            size = size.saturating_add(arg.as_ref().len().saturating_add(25));
        }
    }
    let mut out = Vec::with_capacity(size);
    for command in commands {
        let args = command.as_ref();
        out.push(b'*');
        push_decimal(&mut out, args.len() as u64);
        out.extend_from_slice(b"\r\n");
        for arg in args {
            let arg = arg.as_ref();
            out.push(b'$');
            push_decimal(&mut out, arg.len() as u64);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
    }
    Ok(out)
}

/// One command argument, extracted from Python and readable without the GIL.
enum Arg {
    Bytes(PyBackedBytes),
    Str(PyBackedStr),
    /// Decimal text of an `i64` (at most 20 characters).
    Small([u8; 20], u8),
}

impl AsRef<[u8]> for Arg {
    fn as_ref(&self) -> &[u8] {
        match self {
            Self::Bytes(b) => b,
            Self::Str(s) => s.as_bytes(),
            Self::Small(buf, len) => &buf[..usize::from(*len).min(buf.len())],
        }
    }
}

fn small_int(n: i64) -> Arg {
    let mut buf = [0u8; 20];
    let mut tmp = Vec::with_capacity(20);
    if n < 0 {
        tmp.push(b'-');
    }
    push_decimal(&mut tmp, n.unsigned_abs());
    let len = tmp.len().min(buf.len());
    buf[..len].copy_from_slice(&tmp[..len]);
    Arg::Small(buf, len as u8)
}

fn extract_arg(arg: &Bound<'_, PyAny>, command: usize, index: usize) -> PyResult<Arg> {
    if let Ok(b) = arg.cast::<PyBytes>() {
        return Ok(Arg::Bytes(PyBackedBytes::from(b.clone())));
    }
    if let Ok(s) = arg.cast::<PyString>() {
        return Ok(Arg::Str(PyBackedStr::try_from(s.clone())?));
    }
    if arg.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "command {command}, argument {index}: bool is not a valid Redis argument; \
             convert it to bytes, str or int first"
        )));
    }
    if let Ok(i) = arg.cast::<PyInt>() {
        if let Ok(n) = i.extract::<i64>() {
            return Ok(small_int(n));
        }
        // Beyond i64: let Python print it (int.__repr__ also bypasses a subclass's __str__).
        let text = arg
            .py()
            .get_type::<PyInt>()
            .call_method1("__repr__", (i,))?;
        let text = text.cast_into::<PyString>().map_err(PyErr::from)?;
        return Ok(Arg::Str(PyBackedStr::try_from(text)?));
    }
    if let Ok(f) = arg.cast::<PyFloat>() {
        let text = PyFloat::new(arg.py(), f.value()).repr()?;
        return Ok(Arg::Str(PyBackedStr::try_from(text)?));
    }
    Err(PyTypeError::new_err(format!(
        "command {command}, argument {index}: invalid Redis argument of type {}; \
         expected bytes, str, int or float",
        type_name(arg)
    )))
}

fn extract_command(command: &Bound<'_, PyAny>, index: usize) -> PyResult<Vec<Arg>> {
    let not_a_sequence = || {
        PyTypeError::new_err(format!(
            "command {index} must be a sequence of arguments, got {}",
            type_name(command)
        ))
    };
    let mut args = Vec::new();
    if let Ok(list) = command.cast::<PyList>() {
        args.reserve(list.len());
        for (i, arg) in list.iter().enumerate() {
            args.push(extract_arg(&arg, index, i)?);
        }
    } else if let Ok(tuple) = command.cast::<PyTuple>() {
        args.reserve(tuple.len());
        for (i, arg) in tuple.iter().enumerate() {
            args.push(extract_arg(&arg, index, i)?);
        }
    } else {
        if command.is_instance_of::<PyString>() || command.is_instance_of::<PyBytes>() {
            return Err(not_a_sequence());
        }
        let iter = command.try_iter().map_err(|_| not_a_sequence())?;
        for (i, arg) in iter.enumerate() {
            args.push(extract_arg(&arg?, index, i)?);
        }
    }
    Ok(args)
}

fn for_each_item<'py>(
    seq: &Bound<'py, PyAny>,
    what: &str,
    mut f: impl FnMut(usize, &Bound<'py, PyAny>) -> PyResult<()>,
) -> PyResult<()> {
    if let Ok(list) = seq.cast::<PyList>() {
        for (i, item) in list.iter().enumerate() {
            f(i, &item)?;
        }
    } else if let Ok(tuple) = seq.cast::<PyTuple>() {
        for (i, item) in tuple.iter().enumerate() {
            f(i, &item)?;
        }
    } else {
        let not_a_sequence =
            || PyTypeError::new_err(format!("{what} must be a sequence, got {}", type_name(seq)));
        if seq.is_instance_of::<PyString>() || seq.is_instance_of::<PyBytes>() {
            return Err(not_a_sequence());
        }
        let iter = seq.try_iter().map_err(|_| not_a_sequence())?;
        for (i, item) in iter.enumerate() {
            f(i, &item?)?;
        }
    }
    Ok(())
}

/// `encode_commands(commands)` -> bytes of the RESP-encoded pipeline.
#[pyfunction]
pub fn encode_commands<'py>(
    py: Python<'py>,
    commands: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut extracted: Vec<Vec<Arg>> = Vec::with_capacity(capacity_hint(commands));
    for_each_item(commands, "commands", |index, command| {
        let args = extract_command(command, index)?;
        if args.is_empty() {
            return Err(PyValueError::new_err(format!(
                "command {index} is empty; a command needs at least its name"
            )));
        }
        extracted.push(args);
        Ok(())
    })?;
    let encoded = py.detach(|| encode(&extracted))?;
    Ok(PyBytes::new(py, &encoded))
}

fn key_slot(key: &Bound<'_, PyAny>) -> PyResult<u16> {
    if let Ok(b) = key.cast::<PyBytes>() {
        return Ok(slot(b.as_bytes()));
    }
    if let Ok(s) = key.cast::<PyString>() {
        return Ok(slot(s.to_str()?.as_bytes()));
    }
    Err(PyTypeError::new_err(format!(
        "key must be bytes or str, got {}",
        type_name(key)
    )))
}

/// `hash_slot(key)` -> the Redis Cluster slot (0..16383) of a bytes or str key.
#[pyfunction]
pub fn hash_slot(key: &Bound<'_, PyAny>) -> PyResult<u16> {
    key_slot(key)
}

/// `hash_slots(keys)` -> the Redis Cluster slot of each key, in order.
#[pyfunction]
pub fn hash_slots(keys: &Bound<'_, PyAny>) -> PyResult<Vec<u16>> {
    let mut slots = Vec::with_capacity(capacity_hint(keys));
    for_each_item(keys, "keys", |_, key| {
        slots.push(key_slot(key)?);
        Ok(())
    })?;
    Ok(slots)
}

/// Groups `(key, value)` pairs by hash slot and encodes one `MSET` per slot and chunk of at most
/// `chunk` pairs, slots ascending (pairs keep their order within a slot, so the last of two
/// writes to one key wins, as in one `MSET`). Returns each command's slot, each command's end
/// offset in the buffer, and the buffer.
pub fn msets_by_slot<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    keys: &[K],
    values: &[V],
    chunk: usize,
) -> (Vec<u16>, Vec<usize>, Vec<u8>) {
    let n = keys.len().min(values.len());
    let chunk = chunk.max(1);
    let slots: Vec<u16> = keys[..n].iter().map(|k| slot(k.as_ref())).collect();
    // A counting sort by slot: stable, O(n + 16384).
    let mut starts = vec![0usize; usize::from(SLOT_COUNT) + 1];
    for &s in &slots {
        starts[usize::from(s) + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut order = vec![0usize; n];
    let mut next = starts.clone();
    for (i, &s) in slots.iter().enumerate() {
        order[next[usize::from(s)]] = i;
        next[usize::from(s)] += 1;
    }
    let size: usize = (0..n)
        .map(|i| keys[i].as_ref().len() + values[i].as_ref().len() + 50)
        .sum();
    let mut out = Vec::with_capacity(size + 16 * n.min(usize::from(SLOT_COUNT)));
    let (mut command_slots, mut ends) = (Vec::new(), Vec::new());
    for s in 0..usize::from(SLOT_COUNT) {
        for group in order[starts[s]..starts[s + 1]].chunks(chunk) {
            out.push(b'*');
            push_decimal(&mut out, 1 + 2 * group.len() as u64);
            out.extend_from_slice(b"\r\n$4\r\nMSET\r\n");
            for &i in group {
                for arg in [keys[i].as_ref(), values[i].as_ref()] {
                    out.push(b'$');
                    push_decimal(&mut out, arg.len() as u64);
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(arg);
                    out.extend_from_slice(b"\r\n");
                }
            }
            command_slots.push(s as u16);
            ends.push(out.len());
        }
    }
    (command_slots, ends, out)
}

/// `encode_msets_by_slot(keys, values, chunk)` -> `(slots, ends, payload)`: see [`msets_by_slot`].
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn encode_msets_by_slot<'py>(
    py: Python<'py>,
    keys: &Bound<'py, PyList>,
    values: &Bound<'py, PyList>,
    chunk: usize,
) -> PyResult<(Vec<u16>, Vec<usize>, Bound<'py, PyBytes>)> {
    if keys.len() != values.len() {
        return Err(PyValueError::new_err(format!(
            "{} keys but {} values",
            keys.len(),
            values.len()
        )));
    }
    let mut ks: Vec<Arg> = Vec::with_capacity(keys.len());
    let mut vs: Vec<PyBackedBytes> = Vec::with_capacity(values.len());
    let mut index = 0;
    while index < keys.len() && index < values.len() {
        let key = keys.get_item(index)?;
        ks.push(if let Ok(b) = key.cast::<PyBytes>() {
            Arg::Bytes(PyBackedBytes::from(b.clone()))
        } else if let Ok(s) = key.cast::<PyString>() {
            Arg::Str(PyBackedStr::try_from(s.clone())?)
        } else {
            return Err(PyTypeError::new_err(format!(
                "key {index} must be bytes or str, got {}",
                type_name(&key)
            )));
        });
        let value = values.get_item(index)?;
        match value.cast::<PyBytes>() {
            Ok(b) => vs.push(PyBackedBytes::from(b.clone())),
            Err(_) => {
                return Err(PyTypeError::new_err(format!(
                    "value {index} must be bytes, got {}",
                    type_name(&value)
                )))
            }
        }
        index += 1;
    }
    let (slots, ends, payload) = py.detach(|| msets_by_slot(&ks, &vs, chunk));
    Ok((slots, ends, PyBytes::new(py, &payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_check_value() {
        // The standard check value of CRC-16/XMODEM.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn redis_documented_slots() {
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
    }

    #[test]
    fn hash_tag_rules() {
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"{"), b"{");
        assert_eq!(hash_tag(b"}{"), b"}{");
        assert_eq!(hash_tag(b"a{b"), b"a{b");
        assert_eq!(hash_tag(b"{}"), b"{}");
    }

    #[test]
    fn slots_are_in_range() {
        for i in 0..2000u32 {
            assert!(slot(&i.to_le_bytes()) < SLOT_COUNT);
        }
    }

    #[test]
    fn encodes_a_command() {
        let out = encode(&[vec![&b"SET"[..], b"k", b"v"]]).expect("encode");
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
    }

    #[test]
    fn encodes_empty_args_and_many_commands() {
        let out = encode(&[vec![&b"GET"[..], b""], vec![&b"PING"[..]]]).expect("encode");
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n*1\r\n$4\r\nPING\r\n");
        assert!(encode::<Vec<&[u8]>, &[u8]>(&[]).expect("encode").is_empty());
    }

    #[test]
    fn empty_command_is_rejected() {
        let commands: Vec<Vec<&[u8]>> = vec![vec![b"PING"], vec![]];
        assert!(matches!(
            encode(&commands),
            Err(NativeError::InvalidArgument(msg)) if msg.contains("command 1")
        ));
    }

    #[test]
    fn msets_group_by_slot_and_chunk() {
        let keys: Vec<&[u8]> = vec![b"{a}1", b"{b}1", b"{a}2", b"{a}3"];
        let values: Vec<&[u8]> = vec![b"x", b"y", b"z", b"w"];
        let (slots, ends, out) = msets_by_slot(&keys, &values, 2);
        let (a, b) = (slot(b"a"), slot(b"b"));
        let mut expected_slots = vec![a, a, b];
        let mut commands = vec![
            vec![&b"MSET"[..], b"{a}1", b"x", b"{a}2", b"z"],
            vec![&b"MSET"[..], b"{a}3", b"w"],
            vec![&b"MSET"[..], b"{b}1", b"y"],
        ];
        if b < a {
            expected_slots = vec![b, a, a];
            commands.rotate_right(1);
        }
        assert_eq!(slots, expected_slots);
        assert_eq!(out, encode(&commands).unwrap());
        assert_eq!(ends.last(), Some(&out.len()));
        assert_eq!(ends.len(), 3);
    }

    #[test]
    fn small_ints_print_in_decimal() {
        for n in [0i64, 7, -7, 10, -10, 1234567890, i64::MAX, i64::MIN] {
            assert_eq!(small_int(n).as_ref(), n.to_string().as_bytes());
        }
    }
}
