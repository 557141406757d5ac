//! The layouts in `requests.rs` against kafka-protocol itself: requests of every API
//! the broker serves, in every version the crate decodes, encoded by the crate with
//! every array, string and tagged field non-empty, must pass whole; and whatever
//! passes after lengths are forged into them (or they are cut short) must decode,
//! with the decoder reading exactly the bytes the walk read and allocating no more
//! than a small multiple of the frame at once.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable};

mod populated;

use super::{decode, validate};
use crate::broker::handlers::{SERVED, supported};
use populated::{crate_versions, extra_tags, populated, s};

/// Records, per thread, the largest single allocation made while `track` runs.
struct LargestAllocation;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

impl LargestAllocation {
    fn note(size: usize) {
        // `try_with`: allocations also happen while a thread's locals are torn down.
        let _ = TRACKING.try_with(|on| {
            if on.get() {
                let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
            }
        });
    }

    fn track<T>(f: impl FnOnce() -> T) -> (T, usize) {
        LARGEST.with(|l| l.set(0));
        TRACKING.with(|t| t.set(true));
        let out = f();
        TRACKING.with(|t| t.set(false));
        (out, LARGEST.with(Cell::get))
    }
}

unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        Self::note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        Self::note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        Self::note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

fn header(api: ApiKey, v: i16) -> RequestHeader {
    let header_version = api.request_header_version(v);
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(v)
        .with_correlation_id(77)
        .with_client_id(Some(s("ember-test")))
        .with_unknown_tagged_fields(extra_tags(header_version >= 2))
}

fn frame(api: ApiKey, v: i16, request: &RequestKind) -> Bytes {
    let mut out = BytesMut::new();
    header(api, v)
        .encode(&mut out, api.request_header_version(v))
        .unwrap_or_else(|e| panic!("encoding a {api:?} v{v} header: {e}"));
    request
        .encode(&mut out, v)
        .unwrap_or_else(|e| panic!("encoding a populated {api:?} v{v}: {e:#}"));
    out.freeze()
}

/// Every (API, version) the layouts cover, with a populated request's frame.
fn every_populated_frame() -> Vec<(ApiKey, i16, RequestKind, Bytes)> {
    let mut out = vec![];
    for api in SERVED {
        let range = crate_versions(api);
        for v in range.min..=range.max {
            let request = populated(api, v);
            let bytes = frame(api, v, &request);
            out.push((api, v, request, bytes));
        }
    }
    out
}

#[test]
fn the_layouts_cover_every_version_the_crate_decodes_and_the_broker_serves() {
    for api in SERVED {
        let layout = super::requests::request(api).expect("a layout");
        let range = crate_versions(api);
        assert_eq!(
            (layout.versions.min, layout.versions.max),
            (range.min, range.max),
            "{api:?}"
        );
        let (min, max) = supported(api).expect("served");
        assert!(
            layout.versions.contains(min) && layout.versions.contains(max),
            "{api:?} v{min}..=v{max}"
        );
    }
}

#[test]
fn populated_requests_of_every_version_pass_whole_and_decode_as_sent() {
    let frames = every_populated_frame();
    assert!(frames.len() > 100, "{} frames", frames.len());
    for (api, v, request, bytes) in frames {
        if let Err(e) = validate(api, v, &bytes) {
            panic!("{api:?} v{v} refused: {e}\n{bytes:02x?}");
        }
        let (decoded_header, decoded) = decode(api, v, bytes.clone())
            .unwrap_or_else(|e| panic!("{api:?} v{v} does not decode: {e}"));
        assert_eq!(decoded_header, header(api, v), "{api:?} v{v}");
        assert_eq!(decoded, request, "{api:?} v{v}");
        // Whole: one byte more or less is refused.
        let mut longer = BytesMut::from(&bytes[..]);
        longer.put_u8(0);
        assert!(validate(api, v, &longer).is_err(), "{api:?} v{v} + 1 byte");
        assert!(
            validate(api, v, &bytes[..bytes.len() - 1]).is_err(),
            "{api:?} v{v} - 1 byte"
        );
    }
}

#[test]
fn nulls_pass_where_the_crate_allows_them_and_nowhere_else() {
    let group_without_topics = OffsetFetchRequestGroup::default()
        .with_group_id(GroupId(s("group")))
        .with_topics(None);
    let cases: Vec<(ApiKey, i16, RequestKind)> = vec![
        (
            ApiKey::Metadata,
            1,
            MetadataRequest::default().with_topics(None).into(),
        ),
        (
            ApiKey::Metadata,
            9,
            MetadataRequest::default().with_topics(None).into(),
        ),
        (ApiKey::Produce, 3, ProduceRequest::default().into()),
        (ApiKey::Produce, 9, ProduceRequest::default().into()),
        (
            ApiKey::OffsetFetch,
            1,
            OffsetFetchRequest::default().with_topics(None).into(),
        ),
        (
            ApiKey::OffsetFetch,
            6,
            OffsetFetchRequest::default().with_topics(None).into(),
        ),
        (
            ApiKey::OffsetFetch,
            8,
            OffsetFetchRequest::default()
                .with_groups(vec![group_without_topics])
                .into(),
        ),
    ];
    for (api, v, request) in cases {
        let bytes = frame(api, v, &request);
        let (_, decoded) = decode(api, v, bytes).unwrap_or_else(|e| panic!("{api:?} v{v}: {e}"));
        assert_eq!(decoded, request, "{api:?} v{v}");
    }

    // Heartbeat's group id may not be null: its int16 length follows the header's
    // 8 bytes and 12-byte client id.
    let mut bytes = frame(ApiKey::Heartbeat, 0, &populated(ApiKey::Heartbeat, 0)).to_vec();
    bytes[20..22].copy_from_slice(&(-1i16).to_be_bytes());
    let e = validate(ApiKey::Heartbeat, 0, &bytes).unwrap_err();
    assert_eq!(
        e,
        "Heartbeat v0 request: HeartbeatRequest.group_id: null, but the field is not nullable"
    );
}

/// Byte patterns written over every position of every populated frame: lengths of
/// every width (int16, int32, varint) near their extremes, negative ones, and some
/// plausible ones.
const FORGERIES: &[&[u8]] = &[
    &[0x7f, 0xff, 0xff, 0xff],
    &[0xff, 0xff, 0xff, 0xff],
    &[0xff, 0xfe],
    &[0x80, 0x00, 0x00, 0x00],
    &[0x00, 0x00, 0x10, 0x00],
    &[0x00, 0x10],
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0xfe, 0xff, 0xff, 0xff, 0x07],
    &[0x80, 0x80, 0x04],
    &[0xff],
    &[0x7f],
    &[0x00],
    &[0x01],
    &[0x40],
];

fn varint(mut n: u32) -> Vec<u8> {
    let mut out = vec![];
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

#[test]
fn the_allocation_tracker_sees_the_largest_allocation() {
    let (v, largest) = LargestAllocation::track(|| Vec::<u64>::with_capacity(5000));
    assert!(v.capacity() >= 5000);
    assert!(largest >= 40_000, "{largest}");
    let (_, largest) = LargestAllocation::track(|| ());
    assert_eq!(largest, 0);
}

#[test]
fn what_passes_under_forged_lengths_decodes_whole_without_outsized_allocations() {
    let mut accepted = 0usize;
    let mut refused = 0usize;
    for (api, v, _, bytes) in every_populated_frame() {
        let mut candidates: Vec<Vec<u8>> = vec![];
        for at in 8..bytes.len() {
            // Counts just within and just past what is left after a length there.
            let left = (bytes.len() - at) as u32;
            let mut forgeries: Vec<Vec<u8>> = FORGERIES.iter().map(|f| f.to_vec()).collect();
            for n in [left / 4, left / 2, left.saturating_sub(4), left, left + 1] {
                forgeries.push(n.to_be_bytes().to_vec());
                forgeries.push((n as u16).to_be_bytes().to_vec());
                forgeries.push(varint(n + 1));
            }
            for forged in forgeries {
                let mut b = bytes.to_vec();
                let end = (at + forged.len()).min(b.len());
                b[at..end].copy_from_slice(&forged[..end - at]);
                candidates.push(b);
            }
            candidates.push(bytes[..at].to_vec());
        }
        for candidate in candidates {
            if validate(api, v, &candidate).is_err() {
                refused += 1;
                continue;
            }
            accepted += 1;
            let len = candidate.len();
            let mut rest = Bytes::from(candidate);
            let (decoded, largest) = LargestAllocation::track(|| {
                RequestHeader::decode(&mut rest, api.request_header_version(v))
                    .and_then(|_| RequestKind::decode(api, &mut rest, v))
                    .map(drop)
            });
            // What passes, decodes, and the decoder reads exactly what was walked.
            if let Err(e) = decoded {
                panic!("{api:?} v{v}: a {len}-byte frame passed but does not decode: {e:#}");
            }
            assert_eq!(rest.len(), 0, "{api:?} v{v}: the decoder left bytes unread");
            // An element takes some bytes on the wire and at most ~100 in memory.
            assert!(
                largest <= 64 * len + 2048,
                "{api:?} v{v}: a {len}-byte frame passed and decoding it allocated \
                 {largest} bytes at once"
            );
        }
    }
    assert!(accepted > 1000 && refused > 10_000, "{accepted} {refused}");
}

#[test]
fn the_reported_metadata_request_is_refused_with_what_was_wrong() {
    let mut wire = BytesMut::new();
    wire.put_i16(3);
    wire.put_i16(1);
    wire.put_i32(7);
    wire.put_i16(5);
    wire.put_slice(b"chaos");
    wire.put_i32(0x7fff_ffff);
    wire.put_u8(0);
    let e = validate(ApiKey::Metadata, 1, &wire).unwrap_err();
    assert_eq!(
        e,
        "Metadata v1 request: MetadataRequest.topics: claims 2147483647 elements of at least \
         2 bytes, 1 bytes left"
    );
    let e = crate::broker::decode_request_frame(wire.freeze()).unwrap_err();
    assert!(e.contains("2147483647"), "{e}");
}

#[test]
fn compact_lengths_and_tagged_fields_are_checked_too() {
    // Metadata v9: flexible header (v2) then a compact topics array of 2^32-2.
    let mut wire = BytesMut::new();
    wire.put_i16(3);
    wire.put_i16(9);
    wire.put_i32(7);
    wire.put_i16(-1); // client id null
    wire.put_u8(0); // no header tags
    wire.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    wire.put_slice(&[0, 0, 0]);
    let e = validate(ApiKey::Metadata, 9, &wire).unwrap_err();
    assert!(e.contains("topics: claims 4294967294 elements"), "{e}");

    // A header tag that claims more than the frame has.
    let mut wire = BytesMut::new();
    wire.put_i16(3);
    wire.put_i16(9);
    wire.put_i32(7);
    wire.put_i16(-1);
    wire.put_u8(1);
    wire.put_u8(5); // tag 5
    wire.put_slice(&[0xff, 0xff, 0xff, 0x7f]); // its size
    let e = validate(ApiKey::Metadata, 9, &wire).unwrap_err();
    assert!(e.contains("header.<tag 5>: claims 268435455 bytes"), "{e}");

    // Fetch v12's cluster id (known tag 0) whose compact string overruns its tag.
    let request = populated(ApiKey::Fetch, 12);
    let bytes = frame(ApiKey::Fetch, 12, &request);
    let cluster = bytes
        .windows(8)
        .position(|w| w == b"\x08cluster")
        .expect("the cluster id");
    let mut forged = bytes.to_vec();
    forged[cluster] = 0x7f;
    let e = validate(ApiKey::Fetch, 12, &forged).unwrap_err();
    assert!(e.contains("FetchRequest.cluster_id"), "{e}");
}
