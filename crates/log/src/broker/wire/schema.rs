//! The vocabulary the request layouts in [`super::requests`] are written in: a message
//! is a struct of fields, each present in a range of versions; flexible versions
//! encode strings, bytes and arrays compactly (unsigned varint length + 1, 0 for null)
//! and end every struct with tagged fields.

/// An inclusive range of versions.
#[derive(Debug, Clone, Copy)]
pub(super) struct Versions {
    pub min: i16,
    pub max: i16,
}

impl Versions {
    pub fn contains(self, version: i16) -> bool {
        self.min <= version && version <= self.max
    }
}

/// Every version.
pub(super) const ALL: Versions = Versions {
    min: 0,
    max: i16::MAX,
};

/// `version` and later.
pub(super) const fn from(version: i16) -> Versions {
    Versions {
        min: version,
        max: i16::MAX,
    }
}

/// Up to `version`.
pub(super) const fn to(version: i16) -> Versions {
    Versions {
        min: 0,
        max: version,
    }
}

/// `min` to `max`, both included.
pub(super) const fn range(min: i16, max: i16) -> Versions {
    Versions { min, max }
}

/// A field's wire type. Strings, bytes and arrays have an int16 (strings) or int32
/// length, -1 for null, in the versions that are not flexible, and a compact length
/// in those that are. Only the types these requests use are here; kafka-protocol's
/// varints, unsigned and float types join when a request needs them.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ty {
    Int8,
    Int16,
    Int32,
    Int64,
    Bool,
    Uuid,
    String,
    NullableString,
    /// An int16-length nullable string even in flexible versions: the header's
    /// `client_id`, which a broker must read before it knows how to read the rest.
    LegacyNullableString,
    Bytes,
    NullableBytes,
    Array(&'static Ty),
    NullableArray(&'static Ty),
    Struct(&'static Layout),
}

/// A struct: its fields in wire order, then (in flexible versions) its tagged fields.
#[derive(Debug)]
pub(super) struct Layout {
    pub name: &'static str,
    pub fields: &'static [Field],
    /// Tags the decoder reads as typed values; other tags it keeps as raw bytes.
    pub tagged: &'static [Tagged],
}

#[derive(Debug)]
pub(super) struct Field {
    pub name: &'static str,
    pub ty: Ty,
    pub versions: Versions,
}

#[derive(Debug)]
pub(super) struct Tagged {
    pub tag: u32,
    pub name: &'static str,
    pub ty: Ty,
    pub versions: Versions,
}

/// A top-level message: the versions kafka-protocol decodes and those of them that
/// are flexible.
#[derive(Debug)]
pub(super) struct Message {
    pub versions: Versions,
    pub flexible: Versions,
    pub body: &'static Layout,
}

pub(super) const fn field(name: &'static str, ty: Ty, versions: Versions) -> Field {
    Field { name, ty, versions }
}

pub(super) const fn tagged(tag: u32, name: &'static str, ty: Ty, versions: Versions) -> Tagged {
    Tagged {
        tag,
        name,
        ty,
        versions,
    }
}

/// A struct without known tagged fields.
pub(super) const fn fields(name: &'static str, fields: &'static [Field]) -> Layout {
    Layout {
        name,
        fields,
        tagged: &[],
    }
}
