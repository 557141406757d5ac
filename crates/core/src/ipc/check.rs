//! Checks of one IPC message against the bytes that hold it, before arrow-ipc reads it.
//!
//! arrow-ipc trusts the lengths and offsets in a message's metadata: a buffer past the
//! end of the body, a validity bitmap shorter than its array, an `Int` of bit width
//! 24 or a union of 200 children make it panic, and a length it takes from the
//! metadata becomes an allocation. These checks mirror the order in which arrow-ipc
//! reads field nodes and buffers (`RecordBatchDecoder::create_array`), so every
//! length arrow uses is first bounded by bytes the message really has:
//!
//! - a buffer's offset + length lies inside the body; a compressed buffer's claimed
//!   decompressed length is at most what its codec can produce from its bytes;
//! - a node's null count is at most its length; a validity bitmap, a values buffer
//!   or an offsets buffer holds at least what the node's length needs;
//! - a length that no buffer backs (a `Null` column, a struct without fields, the
//!   row count of a batch without columns) is at most [`MAX_UNBACKED_LEN`].
//!
//! Types ember never writes and arrow decodes with more assertions (unions, list
//! views, run-end encoding) are refused.

use std::collections::VecDeque;

use arrow::datatypes::{DataType, Schema};
use arrow::ipc as fb;

/// The most rows a length may claim without a buffer to back it (16 Mi): enough for
/// any batch ember writes, small enough that an array of that many 8-byte values
/// that a later kernel allocates stays far from an allocation failure.
pub const MAX_UNBACKED_LEN: u64 = 1 << 24;

/// The most bytes all compressed buffers of one message may claim to decompress to.
pub const MAX_DECOMPRESSED_MESSAGE: u64 = 1 << 30;

/// The most a zstd or lz4 frame can expand (zstd: a 4-byte RLE block holds 128 KiB).
const MAX_COMPRESSION_RATIO: u64 = 1 << 15;

/// Nesting of types, at most (the flatbuffer verifier allows 64 table levels).
const MAX_DEPTH: usize = 64;

/// Checks that arrow-ipc's schema conversion (`fb_to_schema`) will not panic on `schema`.
pub(crate) fn check_schema(schema: fb::Schema<'_>) -> Result<(), String> {
    if schema.endianness() != fb::Endianness::Little {
        return Err("big-endian IPC data is not supported".into());
    }
    let fields = schema
        .fields()
        .ok_or("the schema message has no field list")?;
    for field in fields {
        check_field(field, 0)?;
    }
    Ok(())
}

fn check_field(field: fb::Field<'_>, depth: usize) -> Result<(), String> {
    let name = field.name().unwrap_or("");
    let bad = |what: String| Err(format!("field {name:?}: {what}"));
    if depth > MAX_DEPTH {
        return bad(format!("types nested deeper than {MAX_DEPTH}"));
    }
    if let Some(dictionary) = field.dictionary() {
        match dictionary.indexType() {
            Some(int) if matches!(int.bitWidth(), 8 | 16 | 32 | 64) => {}
            Some(int) => return bad(format!("dictionary index of bit width {}", int.bitWidth())),
            None => return bad("dictionary encoding without an index type".into()),
        }
    }
    let children = field.children().map_or(0, |c| c.len());
    let one_child = || {
        if children == 1 {
            Ok(())
        } else {
            Err(format!(
                "field {name:?}: a list type with {children} children, not 1"
            ))
        }
    };
    use fb::Type as T;
    match field.type_type() {
        T::Null
        | T::Bool
        | T::Binary
        | T::LargeBinary
        | T::BinaryView
        | T::Utf8
        | T::LargeUtf8
        | T::Utf8View
        | T::Struct_ => {}
        T::Int => {
            let int = field.type_as_int().ok_or("Int type without parameters")?;
            if !matches!(int.bitWidth(), 8 | 16 | 32 | 64) {
                return bad(format!("Int type of bit width {}", int.bitWidth()));
            }
        }
        T::FixedSizeBinary => {
            let fsb = field
                .type_as_fixed_size_binary()
                .ok_or("FixedSizeBinary type without parameters")?;
            if fsb.byteWidth() < 0 {
                return bad(format!("FixedSizeBinary of width {}", fsb.byteWidth()));
            }
        }
        T::FloatingPoint => {
            let float = field
                .type_as_floating_point()
                .ok_or("FloatingPoint type without parameters")?;
            if !matches!(
                float.precision(),
                fb::Precision::HALF | fb::Precision::SINGLE | fb::Precision::DOUBLE
            ) {
                return bad(format!(
                    "FloatingPoint of precision {:?}",
                    float.precision()
                ));
            }
        }
        T::Date => {
            let date = field.type_as_date().ok_or("Date type without parameters")?;
            if !matches!(date.unit(), fb::DateUnit::DAY | fb::DateUnit::MILLISECOND) {
                return bad(format!("Date of unit {:?}", date.unit()));
            }
        }
        T::Time => {
            let time = field.type_as_time().ok_or("Time type without parameters")?;
            let ok = matches!(
                (time.bitWidth(), time.unit()),
                (32, fb::TimeUnit::SECOND | fb::TimeUnit::MILLISECOND)
                    | (64, fb::TimeUnit::MICROSECOND | fb::TimeUnit::NANOSECOND)
            );
            if !ok {
                return bad(format!(
                    "Time of bit width {} and unit {:?}",
                    time.bitWidth(),
                    time.unit()
                ));
            }
        }
        T::Timestamp => {
            let ts = field
                .type_as_timestamp()
                .ok_or("Timestamp type without parameters")?;
            check_time_unit(ts.unit()).or_else(|e| bad(format!("Timestamp of {e}")))?;
        }
        T::Duration => {
            let d = field
                .type_as_duration()
                .ok_or("Duration type without parameters")?;
            check_time_unit(d.unit()).or_else(|e| bad(format!("Duration of {e}")))?;
        }
        T::Interval => {
            let i = field
                .type_as_interval()
                .ok_or("Interval type without parameters")?;
            if !matches!(
                i.unit(),
                fb::IntervalUnit::YEAR_MONTH
                    | fb::IntervalUnit::DAY_TIME
                    | fb::IntervalUnit::MONTH_DAY_NANO
            ) {
                return bad(format!("Interval of unit {:?}", i.unit()));
            }
        }
        T::List | T::LargeList => one_child()?,
        T::FixedSizeList => {
            one_child()?;
            let fsl = field
                .type_as_fixed_size_list()
                .ok_or("FixedSizeList type without parameters")?;
            if fsl.listSize() < 0 {
                return bad(format!("FixedSizeList of size {}", fsl.listSize()));
            }
        }
        T::Map => {
            one_child()?;
            field.type_as_map().ok_or("Map type without parameters")?;
        }
        T::Decimal => {
            let d = field
                .type_as_decimal()
                .ok_or("Decimal type without parameters")?;
            let max_precision = match d.bitWidth() {
                32 => 9,
                64 => 18,
                128 => 38,
                256 => 76,
                w => return bad(format!("Decimal of bit width {w}")),
            };
            let (p, s) = (d.precision(), d.scale());
            if !(1..=max_precision).contains(&p) || s < -max_precision || s > p {
                return bad(format!(
                    "Decimal{} of precision {p} and scale {s}",
                    d.bitWidth()
                ));
            }
        }
        other => {
            return bad(format!(
                "type {other:?} is not supported in ember's IPC data"
            ));
        }
    }
    if let Some(children) = field.children() {
        for child in children {
            check_field(child, depth + 1)?;
        }
    }
    Ok(())
}

fn check_time_unit(unit: fb::TimeUnit) -> Result<(), String> {
    match unit {
        fb::TimeUnit::SECOND
        | fb::TimeUnit::MILLISECOND
        | fb::TimeUnit::MICROSECOND
        | fb::TimeUnit::NANOSECOND => Ok(()),
        unit => Err(format!("unit {unit:?}")),
    }
}

/// Checks a record batch message (or the data of a dictionary batch, as a batch of
/// one column of `fields`) against its body.
pub(crate) fn check_batch(
    batch: fb::RecordBatch<'_>,
    fields: &[&DataType],
    body: &[u8],
) -> Result<(), String> {
    let nodes = batch.nodes().ok_or("the batch has no field node list")?;
    let buffers = batch.buffers().ok_or("the batch has no buffer list")?;
    let mut walk = Walk {
        nodes: nodes.iter().collect(),
        buffers: buffers.iter().collect(),
        next_node: 0,
        next_buffer: 0,
        body,
        compressed: batch.compression().is_some(),
        decompressed: 0,
        variadic: batch.variadicBufferCounts().into_iter().flatten().collect(),
    };
    let rows = batch.length();
    if rows < 0 {
        return Err(format!("the batch has {rows} rows"));
    }
    if fields.is_empty() && rows as u64 > MAX_UNBACKED_LEN {
        return Err(format!(
            "a batch without columns claims {rows} rows, more than {MAX_UNBACKED_LEN}"
        ));
    }
    for (i, data_type) in fields.iter().enumerate() {
        walk.field(data_type, 0)
            .map_err(|e| format!("column {i} ({data_type}): {e}"))?;
    }
    if !walk.variadic.is_empty() {
        return Err(format!(
            "{} variadic buffer counts left over after the last view column",
            walk.variadic.len()
        ));
    }
    Ok(())
}

/// The data types of the fields of `schema` that use dictionary `id`, as arrow finds
/// them (`Schema::fields_with_dict_id`): the first one's values are decoded.
pub(crate) fn dictionary_value_type(schema: &Schema, id: i64) -> Result<DataType, String> {
    #[allow(deprecated)]
    let fields = schema.fields_with_dict_id(id);
    match fields.first().map(|f| f.data_type()) {
        Some(DataType::Dictionary(_, value)) => Ok(value.as_ref().clone()),
        _ => Err(format!("dictionary id {id} is not in the schema")),
    }
}

struct Walk<'a> {
    nodes: Vec<&'a fb::FieldNode>,
    buffers: Vec<&'a fb::Buffer>,
    next_node: usize,
    next_buffer: usize,
    body: &'a [u8],
    compressed: bool,
    /// Decompressed bytes claimed so far.
    decompressed: u64,
    variadic: VecDeque<i64>,
}

impl Walk<'_> {
    /// The next node's length and null count.
    fn node(&mut self) -> Result<(u64, u64), String> {
        let node = self
            .nodes
            .get(self.next_node)
            .ok_or_else(|| format!("field node {} is missing", self.next_node))?;
        let (index, length, nulls) = (self.next_node, node.length(), node.null_count());
        self.next_node += 1;
        if length < 0 || nulls < 0 || nulls > length {
            return Err(format!(
                "field node {index} has length {length} and null count {nulls}"
            ));
        }
        Ok((length as u64, nulls as u64))
    }

    /// Consumes the next buffer; its length once decompressed.
    fn buffer(&mut self) -> Result<u64, String> {
        let index = self.next_buffer;
        let buffer = self
            .buffers
            .get(index)
            .ok_or_else(|| format!("buffer {index} is missing"))?;
        self.next_buffer += 1;
        let (offset, length) = (buffer.offset(), buffer.length());
        let end = offset.checked_add(length);
        if offset < 0 || length < 0 || end.is_none_or(|end| end as u64 > self.body.len() as u64) {
            return Err(format!(
                "buffer {index} at offset {offset} of length {length} is outside the body of {} bytes",
                self.body.len()
            ));
        }
        let (offset, length) = (offset as usize, length as usize);
        if !self.compressed || length == 0 {
            return Ok(length as u64);
        }
        if length < 8 {
            return Err(format!(
                "compressed buffer {index} has {length} bytes, less than its 8-byte length"
            ));
        }
        let prefix = &self.body[offset..offset + 8];
        let claim = i64::from_le_bytes(prefix.try_into().expect("8 bytes"));
        let compressed = (length - 8) as u64;
        match claim {
            -1 => Ok(compressed),
            0 => Ok(0),
            claim if claim > 0 => {
                let claim = claim as u64;
                let most = compressed.saturating_mul(MAX_COMPRESSION_RATIO);
                self.decompressed = self.decompressed.saturating_add(claim);
                if claim > most {
                    Err(format!(
                        "compressed buffer {index} of {compressed} bytes claims {claim} bytes decompressed"
                    ))
                } else if self.decompressed > MAX_DECOMPRESSED_MESSAGE {
                    Err(format!(
                        "the buffers of one message claim more than {MAX_DECOMPRESSED_MESSAGE} bytes decompressed"
                    ))
                } else {
                    Ok(claim)
                }
            }
            claim => Err(format!(
                "compressed buffer {index} claims a decompressed length of {claim}"
            )),
        }
    }

    /// A buffer that must hold `needed` bytes, in whole values of `width` bytes
    /// (arrow's validation views a whole offsets or values buffer as a slice of
    /// values, and asserts that its length is a multiple of their size).
    fn buffer_of(&mut self, needed: Option<u64>, width: u64, what: &str) -> Result<(), String> {
        let index = self.next_buffer;
        let have = self.buffer()?;
        match needed {
            Some(needed) if needed <= have && have % width == 0 => Ok(()),
            _ => Err(format!(
                "{what} buffer {index} has {have} bytes: not whole {width}-byte values, or fewer than its length needs"
            )),
        }
    }

    /// The validity buffer of a node of `length` with `nulls` nulls (read only if
    /// there are nulls, as arrow does).
    fn validity(&mut self, length: u64, nulls: u64) -> Result<(), String> {
        let needed = if nulls > 0 { length.div_ceil(8) } else { 0 };
        self.buffer_of(Some(needed), 1, "validity")
    }

    fn unbacked(length: u64) -> Result<(), String> {
        if length > MAX_UNBACKED_LEN {
            return Err(format!(
                "length {length} without data to back it is more than {MAX_UNBACKED_LEN}"
            ));
        }
        Ok(())
    }

    /// Offsets of `width` bytes for `length` values (none for an empty array).
    fn offsets(&mut self, length: u64, width: u64) -> Result<(), String> {
        let needed = if length == 0 {
            Some(0)
        } else {
            length.checked_add(1).and_then(|n| n.checked_mul(width))
        };
        self.buffer_of(needed, width, "offsets")
    }

    /// Walks one field the way arrow-ipc reads it; returns its length.
    fn field(&mut self, data_type: &DataType, depth: usize) -> Result<u64, String> {
        if depth > MAX_DEPTH {
            return Err(format!("types nested deeper than {MAX_DEPTH}"));
        }
        use DataType as D;
        let (length, nulls) = self.node()?;
        match data_type {
            D::Null => Self::unbacked(length)?,
            D::Boolean => {
                self.validity(length, nulls)?;
                self.buffer_of(Some(length.div_ceil(8)), 1, "values")?;
            }
            D::FixedSizeBinary(width) => {
                self.validity(length, nulls)?;
                if *width == 0 {
                    Self::unbacked(length)?;
                }
                let width = u64::try_from(*width).map_err(|_| "negative width".to_string())?;
                self.buffer_of(length.checked_mul(width), 1, "values")?;
            }
            D::Utf8 | D::Binary => {
                self.validity(length, nulls)?;
                self.offsets(length, 4)?;
                self.buffer()?;
            }
            D::LargeUtf8 | D::LargeBinary => {
                self.validity(length, nulls)?;
                self.offsets(length, 8)?;
                self.buffer()?;
            }
            D::Utf8View | D::BinaryView => {
                let count = self
                    .variadic
                    .pop_front()
                    .ok_or("no variadic buffer count for a view column")?;
                let left = self.buffers.len() - self.next_buffer;
                if count < 0 || count as u64 + 2 > left as u64 {
                    return Err(format!(
                        "{count} variadic buffers claimed, {left} buffers left"
                    ));
                }
                self.validity(length, nulls)?;
                self.buffer_of(length.checked_mul(16), 16, "views")?;
                for _ in 0..count {
                    self.buffer()?;
                }
            }
            D::List(child) | D::Map(child, _) => {
                self.validity(length, nulls)?;
                self.offsets(length, 4)?;
                self.field(child.data_type(), depth + 1)?;
            }
            D::LargeList(child) => {
                self.validity(length, nulls)?;
                self.offsets(length, 8)?;
                self.field(child.data_type(), depth + 1)?;
            }
            D::FixedSizeList(child, size) => {
                self.validity(length, nulls)?;
                let values = self.field(child.data_type(), depth + 1)?;
                let size = u64::try_from(*size).map_err(|_| "negative list size".to_string())?;
                if size == 0 {
                    Self::unbacked(length)?;
                } else if length.checked_mul(size).is_none_or(|n| n > values) {
                    return Err(format!(
                        "{length} lists of {size} values, but {values} values"
                    ));
                }
            }
            D::Struct(fields) => {
                self.validity(length, nulls)?;
                if fields.is_empty() {
                    Self::unbacked(length)?;
                }
                for child in fields {
                    self.field(child.data_type(), depth + 1)?;
                }
            }
            D::Dictionary(key, _) => {
                self.validity(length, nulls)?;
                let width = key
                    .primitive_width()
                    .ok_or("a dictionary key that is no integer")?;
                self.buffer_of(length.checked_mul(width as u64), width as u64, "keys")?;
            }
            other => match other.primitive_width() {
                Some(width) => {
                    self.validity(length, nulls)?;
                    self.buffer_of(length.checked_mul(width as u64), width as u64, "values")?;
                }
                None => return Err(format!("type {other} is not supported in ember's IPC data")),
            },
        }
        Ok(length)
    }
}
