//! Checks a request frame against its API's wire layout before kafka-protocol decodes
//! it.
//!
//! kafka-protocol trusts the lengths it reads: an array of n elements is
//! `Vec::with_capacity(n)` before a single element is read, so a 25-byte Metadata
//! request claiming 2^31-1 topics asks for 150 GB and aborts the process. Here every
//! length (of strings, bytes, arrays, tagged fields; nullable and compact ones alike)
//! is checked against the bytes left in the frame first:
//!
//! ```text
//!  frame ──▶ validate: walk header + body   ──ok──▶ RequestHeader::decode
//!            by requests.rs: each length ≤         RequestKind::decode
//!            bytes left, strings UTF-8,            (reads exactly the walked bytes)
//!            no bytes left over
//!              │
//!              └─err: "Metadata v1 request: MetadataRequest.topics: claims 2147483647
//!                      elements of at least 2 bytes, 1 bytes left"
//!                      ──▶ the connection is closed, with a warning
//! ```
//!
//! A request passes only if all the elements its arrays claim are there to be walked,
//! so what the decoder allocates for an array is bounded by the frame's size times
//! (element size in memory / smallest element on the wire); checking the count times
//! that smallest size up front only makes the error say so at once. Known tagged
//! fields are read as their types (the decoder reads them so, ignoring their size)
//! and must fill exactly their declared size; unknown ones are skipped by it.

mod requests;
mod schema;
#[cfg(test)]
mod tests;

use std::fmt;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::Decodable;

use schema::{Layout, Message, Ty};

/// Validates and decodes the frame of a request the broker serves: `api` at `version`,
/// whose first 8 bytes were read already and said so.
pub(crate) fn decode(
    api: ApiKey,
    version: i16,
    mut frame: Bytes,
) -> Result<(RequestHeader, RequestKind), String> {
    validate(api, version, &frame)?;
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(|e| format!("{api:?} v{version} request header: {e}"))?;
    let request = RequestKind::decode(api, &mut frame, version)
        .map_err(|e| format!("{api:?} v{version} request: {e:#}"))?;
    Ok((header, request))
}

/// Walks a whole frame (header and body) by the layout of `api` at `version`.
pub(crate) fn validate(api: ApiKey, version: i16, frame: &[u8]) -> Result<(), String> {
    let Some(body) = requests::request(api).filter(|m| m.versions.contains(version)) else {
        return Err(format!("{api:?} v{version}: no known request layout"));
    };
    let header_version = api.request_header_version(version);
    let mut walker = Walker {
        buf: frame,
        pos: 0,
        version: header_version,
        flexible: false,
    };
    let fail = |part: &str, e: Fail| format!("{api:?} v{version} {part}: {e}");
    walker
        .message(&requests::REQUEST_HEADER, Path::root("header"))
        .map_err(|e| fail("request header", e))?;
    walker.version = version;
    walker
        .message(body, Path::root(body.body.name))
        .map_err(|e| fail("request", e))?;
    match walker.left() {
        0 => Ok(()),
        n => Err(format!(
            "{api:?} v{version} request: {n} bytes left over after the request"
        )),
    }
}

/// Where in a request a check failed, and what was wrong.
#[derive(Debug)]
struct Fail {
    path: String,
    what: String,
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.what)
    }
}

/// A field path (`MetadataRequest.topics[3].name`), built on the stack as the walk
/// descends and rendered only when something fails.
#[derive(Clone, Copy)]
struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    step: Step,
}

#[derive(Clone, Copy)]
enum Step {
    Root(&'static str),
    Field(&'static str),
    Index(u64),
    Tag(u32),
}

impl<'a> Path<'a> {
    fn root(name: &'static str) -> Path<'static> {
        Path {
            parent: None,
            step: Step::Root(name),
        }
    }

    fn then(&'a self, step: Step) -> Path<'a> {
        Path {
            parent: Some(self),
            step,
        }
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(parent) = self.parent {
            write!(f, "{parent}")?;
        }
        match self.step {
            Step::Root(name) => write!(f, "{name}"),
            Step::Field(name) => write!(f, ".{name}"),
            Step::Index(i) => write!(f, "[{i}]"),
            Step::Tag(tag) => write!(f, ".<tag {tag}>"),
        }
    }
}

struct Walker<'b> {
    buf: &'b [u8],
    pos: usize,
    version: i16,
    flexible: bool,
}

type Walk = Result<(), Fail>;

impl Walker<'_> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn fail(&self, path: &Path, what: String) -> Fail {
        Fail {
            path: path.to_string(),
            what,
        }
    }

    fn take(&mut self, n: usize, path: &Path) -> Result<&[u8], Fail> {
        if n > self.left() {
            return Err(self.fail(path, format!("needs {n} bytes, {} bytes left", self.left())));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    /// A string's bytes, which kafka-protocol refuses unless they are UTF-8: checked
    /// here too, so that a request that passes decodes.
    fn text(&mut self, n: usize, path: &Path) -> Walk {
        if std::str::from_utf8(self.take(n, path)?).is_err() {
            return Err(self.fail(path, "not UTF-8".into()));
        }
        Ok(())
    }

    fn int16(&mut self, path: &Path) -> Result<i16, Fail> {
        let b = self.take(2, path)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn int32(&mut self, path: &Path) -> Result<i32, Fail> {
        let b = self.take(4, path)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An unsigned varint as kafka-protocol reads it (at most 5 bytes), refusing the
    /// encodings it would silently truncate so that both read the same number.
    fn varint(&mut self, path: &Path) -> Result<u32, Fail> {
        let mut value = 0u32;
        for i in 0..5 {
            let b = self.take(1, path)?[0];
            if i == 4 && b > 0x0f {
                return Err(self.fail(path, "a varint longer than 32 bits".into()));
            }
            value |= u32::from(b & 0x7f) << (i * 7);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Ok(value)
    }

    /// A length: `None` for null (refused where the field is not nullable), else at
    /// most `left` after `min_each` × n bytes for n elements.
    fn length(
        &mut self,
        wide: bool,
        nullable: bool,
        min_each: usize,
        path: &Path,
    ) -> Result<Option<usize>, Fail> {
        let (claimed, null) = if self.flexible {
            let n = self.varint(path)?;
            (i64::from(n) - 1, n == 0)
        } else if wide {
            let n = self.int32(path)?;
            (i64::from(n), n == -1)
        } else {
            let n = self.int16(path)?;
            (i64::from(n), n == -1)
        };
        if null {
            return if nullable {
                Ok(None)
            } else {
                Err(self.fail(path, "null, but the field is not nullable".into()))
            };
        }
        if claimed < 0 {
            return Err(self.fail(path, format!("negative length {claimed}")));
        }
        let need = (claimed as u64).saturating_mul(min_each.max(1) as u64);
        if need > self.left() as u64 {
            let what = if min_each == 1 {
                format!("claims {claimed} bytes, {} bytes left", self.left())
            } else {
                format!(
                    "claims {claimed} elements of at least {min_each} bytes, {} bytes left",
                    self.left()
                )
            };
            return Err(self.fail(path, what));
        }
        Ok(Some(claimed as usize))
    }

    fn message(&mut self, message: &Message, path: Path) -> Walk {
        self.flexible = message.flexible.contains(self.version);
        self.layout(message.body, &path)
    }

    fn layout(&mut self, layout: &Layout, path: &Path) -> Walk {
        for field in layout.fields {
            if field.versions.contains(self.version) {
                self.value(field.ty, &path.then(Step::Field(field.name)))?;
            }
        }
        if self.flexible {
            self.tagged_fields(layout, path)?;
        }
        Ok(())
    }

    fn value(&mut self, ty: Ty, path: &Path) -> Walk {
        match ty {
            Ty::Int8 | Ty::Bool => self.take(1, path).map(drop),
            Ty::Int16 => self.take(2, path).map(drop),
            Ty::Int32 => self.take(4, path).map(drop),
            Ty::Int64 => self.take(8, path).map(drop),
            Ty::Uuid => self.take(16, path).map(drop),
            Ty::String | Ty::NullableString => {
                let n = self.length(false, matches!(ty, Ty::NullableString), 1, path)?;
                self.text(n.unwrap_or(0), path)
            }
            Ty::LegacyNullableString => {
                let flexible = std::mem::replace(&mut self.flexible, false);
                let n = self.length(false, true, 1, path);
                self.flexible = flexible;
                self.text(n?.unwrap_or(0), path)
            }
            Ty::Bytes | Ty::NullableBytes => {
                let n = self.length(true, matches!(ty, Ty::NullableBytes), 1, path)?;
                self.take(n.unwrap_or(0), path).map(drop)
            }
            Ty::Array(element) | Ty::NullableArray(element) => {
                let min_each = self.min_size(*element);
                let nullable = matches!(ty, Ty::NullableArray(_));
                let n = self.length(true, nullable, min_each, path)?;
                for i in 0..n.unwrap_or(0) {
                    self.value(*element, &path.then(Step::Index(i as u64)))?;
                }
                Ok(())
            }
            Ty::Struct(layout) => self.layout(layout, path),
        }
    }

    fn tagged_fields(&mut self, layout: &Layout, path: &Path) -> Walk {
        let tags_path = path.then(Step::Field("<tagged fields>"));
        let count = self.varint(&tags_path)?;
        // A tag and a size take at least a byte each.
        if u64::from(count) * 2 > self.left() as u64 {
            return Err(self.fail(
                &tags_path,
                format!(
                    "claims {count} tagged fields of at least 2 bytes, {} bytes left",
                    self.left()
                ),
            ));
        }
        for _ in 0..count {
            let tag = self.varint(&tags_path)?;
            let tag_path = path.then(Step::Tag(tag));
            let size = self.varint(&tag_path)? as usize;
            if size > self.left() {
                return Err(self.fail(
                    &tag_path,
                    format!("claims {size} bytes, {} bytes left", self.left()),
                ));
            }
            let Some(known) = layout.tagged.iter().find(|t| t.tag == tag) else {
                self.pos += size;
                continue;
            };
            let path = path.then(Step::Field(known.name));
            if !known.versions.contains(self.version) {
                return Err(self.fail(&path, format!("tag {tag} is not valid in this version")));
            }
            // The decoder reads a known tag's value as its type, not by its size:
            // read it so too, within the size, and insist that both agree.
            let end = self.pos + size;
            let mut inner = Walker {
                buf: &self.buf[..end],
                pos: self.pos,
                version: self.version,
                flexible: self.flexible,
            };
            inner.value(known.ty, &path)?;
            if inner.pos != end {
                return Err(self.fail(
                    &path,
                    format!(
                        "the value takes {} of the {size} bytes its tag says",
                        inner.pos - self.pos
                    ),
                ));
            }
            self.pos = end;
        }
        Ok(())
    }

    /// The fewest bytes a value of `ty` takes in this version.
    fn min_size(&self, ty: Ty) -> usize {
        let length = |wide: bool| match (self.flexible, wide) {
            (true, _) => 1,
            (false, true) => 4,
            (false, false) => 2,
        };
        match ty {
            Ty::Int8 | Ty::Bool => 1,
            Ty::Int16 | Ty::LegacyNullableString => 2,
            Ty::Int32 => 4,
            Ty::Int64 => 8,
            Ty::Uuid => 16,
            Ty::String | Ty::NullableString => length(false),
            Ty::Bytes | Ty::NullableBytes | Ty::Array(_) | Ty::NullableArray(_) => length(true),
            Ty::Struct(layout) => {
                let fields: usize = layout
                    .fields
                    .iter()
                    .filter(|f| f.versions.contains(self.version))
                    .map(|f| self.min_size(f.ty))
                    .sum();
                fields + usize::from(self.flexible)
            }
        }
    }
}
