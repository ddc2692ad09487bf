//! Resources and responses in their wire form, encoded once and shared by every stream.
//!
//! The store encodes each resource as an `envoy.service.discovery.v3.Resource` when it is
//! written ([`encode_resource`]); a response is then the gRPC frame header, a few small fields
//! and those shared buffers ([`EncodedResponse`]). A stream never copies a resource body into a
//! message of its own, and the copy it makes for the HTTP/2 layer is cut into chunks of about
//! [`CHUNK`] bytes as the connection can take them, so sending the whole mesh to a new client
//! costs that client a pointer per resource, not a second copy of the mesh.
//!
//! # Invariants
//!
//! - The bytes produced are exactly prost's encoding of the equivalent
//!   `DeltaDiscoveryResponse` (fields in field-number order), framed as one uncompressed gRPC
//!   message.
//! - A resource sent to a client that subscribed by alias gets its own copy with those aliases
//!   (field 4) appended; everyone else gets the store's buffer.
//! - Clients sent the whole type at the same generation share one list of it
//!   ([`Resources::Whole`]), so a crowd of node proxies connecting at once costs the list once.

use std::sync::Arc;

use ambit_proto::envoy::service::discovery::v3 as xds;
use bytes::{BufMut, Bytes};
use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::Status;

use crate::resource::format_version;

/// About how many bytes one HTTP/2 body chunk carries: one DATA frame at HTTP/2's default
/// maximum frame size.
pub(crate) const CHUNK: usize = 16 * 1024;

/// Length of the gRPC message prefix: a compression flag and a big-endian length.
const GRPC_PREFIX: usize = 5;

/// `DeltaDiscoveryResponse` field numbers.
const SYSTEM_VERSION_INFO: u32 = 1;
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;
const REMOVED_RESOURCES: u32 = 6;

/// `Resource.aliases`.
const ALIASES: u32 = 4;

/// The wire form of a resource without aliases: name, version and body.
pub(crate) fn encode_resource(name: String, version: u64, body: prost_types::Any) -> Bytes {
    let resource = xds::Resource {
        name,
        version: format_version(version),
        resource: Some(body),
        ..Default::default()
    };
    Bytes::from(resource.encode_to_vec())
}

/// `wire` with `aliases` added, for a client that subscribed by them.
pub(crate) fn with_aliases(wire: &Bytes, aliases: &[String]) -> Bytes {
    if aliases.is_empty() {
        return wire.clone();
    }
    let extra: usize = aliases
        .iter()
        .map(|alias| field_len(ALIASES, alias.len()))
        .sum();
    let mut out = Vec::with_capacity(wire.len() + extra);
    out.extend_from_slice(wire);
    for alias in aliases {
        put_field(ALIASES, alias.as_bytes(), &mut out);
    }
    Bytes::from(out)
}

/// The fields of one response, before encoding.
#[derive(Debug)]
pub(crate) struct ResponseFields {
    pub(crate) system_version_info: String,
    pub(crate) type_url: String,
    pub(crate) nonce: String,
    pub(crate) resources: Resources,
    pub(crate) removed: Vec<String>,
}

/// The encoded `Resource` messages of one response.
#[derive(Debug)]
pub(crate) enum Resources {
    /// Picked for one client.
    Listed(Vec<Bytes>),
    /// Every resource of the type at one generation, in name order, shared.
    Whole(Arc<[Bytes]>),
}

/// One `DeltaDiscoveryResponse` as a gRPC message, handed out in chunks.
#[derive(Debug)]
pub(crate) struct EncodedResponse {
    /// The gRPC prefix and the fields before `resources`; `None` once handed out.
    head: Option<Bytes>,
    resources: Resources,
    /// The next of `resources` to hand out.
    next: usize,
    /// The fields after `resources`; `None` once handed out.
    tail: Option<Bytes>,
    /// Bytes not yet handed out.
    remaining: usize,
    summary: Summary,
}

/// What a response held, for logs and counters.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    pub(crate) type_url: String,
    pub(crate) nonce: String,
    pub(crate) resources: usize,
    pub(crate) removed: usize,
    /// The encoded message, without the gRPC prefix.
    pub(crate) bytes: usize,
}

// === impl EncodedResponse ===

impl EncodedResponse {
    /// Frames `fields`; fails only for a message beyond gRPC's 4 GiB length prefix.
    pub(crate) fn new(fields: ResponseFields) -> Result<Self, Status> {
        let ResponseFields {
            system_version_info,
            type_url,
            nonce,
            resources,
            removed,
        } = fields;
        let resources_len: usize = resources
            .as_slice()
            .iter()
            .map(|r| field_len(RESOURCES, r.len()))
            .sum();
        let mut tail = Vec::new();
        put_string(TYPE_URL, &type_url, &mut tail);
        put_string(NONCE, &nonce, &mut tail);
        for name in &removed {
            // Repeated: even an empty name is a value.
            put_field(REMOVED_RESOURCES, name.as_bytes(), &mut tail);
        }
        let version_len = string_len(SYSTEM_VERSION_INFO, &system_version_info);
        let message_len = version_len + resources_len + tail.len();
        let prefix_len = u32::try_from(message_len).map_err(|_| {
            Status::resource_exhausted(format!(
                "a {type_url} response of {message_len} bytes exceeds gRPC's message size limit"
            ))
        })?;
        let mut head = Vec::with_capacity(GRPC_PREFIX + version_len);
        head.put_u8(0);
        head.put_u32(prefix_len);
        put_string(SYSTEM_VERSION_INFO, &system_version_info, &mut head);
        let summary = Summary {
            type_url,
            nonce,
            resources: resources.len(),
            removed: removed.len(),
            bytes: message_len,
        };
        Ok(Self {
            head: Some(Bytes::from(head)),
            resources,
            next: 0,
            tail: Some(Bytes::from(tail)),
            remaining: GRPC_PREFIX + message_len,
            summary,
        })
    }

    pub(crate) fn summary(&self) -> &Summary {
        &self.summary
    }

    /// The next piece of the framed message, about [`CHUNK`] bytes (more when one resource is
    /// larger); `None` when all of it was handed out.
    pub(crate) fn next_chunk(&mut self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(self.remaining.min(CHUNK));
        if let Some(head) = self.head.take() {
            out.extend_from_slice(&head);
        }
        while out.len() < CHUNK {
            if let Some(resource) = self.resources.as_slice().get(self.next) {
                self.next += 1;
                out.reserve(field_len(RESOURCES, resource.len()));
                put_field(RESOURCES, resource, &mut out);
            } else if let Some(tail) = self.tail.take() {
                out.extend_from_slice(&tail);
            } else {
                break;
            }
        }
        self.remaining = self.remaining.saturating_sub(out.len());
        (!out.is_empty()).then_some(out)
    }
}

// === impl Resources ===

impl Resources {
    pub(crate) fn as_slice(&self) -> &[Bytes] {
        match self {
            Self::Listed(listed) => listed,
            Self::Whole(whole) => whole,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

impl Default for Resources {
    fn default() -> Self {
        Self::Listed(Vec::new())
    }
}

/// Length of a length-delimited field holding `len` bytes.
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Appends a length-delimited field.
fn put_field(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.put_slice(value);
}

/// Length of a proto3 string field: nothing for the empty default.
fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        field_len(tag, value.len())
    }
}

/// Appends a proto3 string field, skipping the empty default as prost does.
fn put_string(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        put_field(tag, value.as_bytes(), buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(len: usize) -> prost_types::Any {
        prost_types::Any {
            type_url: "type.test/Thing".into(),
            value: vec![7; len],
        }
    }

    fn frame(mut response: EncodedResponse) -> (Vec<u8>, usize) {
        let mut bytes = Vec::new();
        let mut chunks = 0;
        while let Some(chunk) = response.next_chunk() {
            assert!(!chunk.is_empty());
            bytes.extend_from_slice(&chunk);
            chunks += 1;
        }
        assert_eq!(response.remaining, 0);
        (bytes, chunks)
    }

    #[test]
    fn responses_are_prost_bytes_in_a_grpc_frame() {
        let cases = [
            (0, 0, 0),
            (1, 0, 2),
            (3, 10, 0),
            (2_000, 300, 5),
            (2, 100_000, 1),
        ];
        for (count, size, removed) in cases {
            let resources: Vec<xds::Resource> = (0..count)
                .map(|i| xds::Resource {
                    name: format!("r{i}"),
                    version: format_version(i as u64),
                    aliases: if i % 2 == 0 {
                        vec![]
                    } else {
                        vec![format!("/10.0.0.{i}")]
                    },
                    resource: Some(body(size)),
                    ..Default::default()
                })
                .collect();
            let expected = xds::DeltaDiscoveryResponse {
                system_version_info: "42".into(),
                resources: resources.clone(),
                type_url: "type.test/Thing".into(),
                removed_resources: (0..removed).map(|i| format!("gone-{i}")).collect(),
                nonce: "1f".into(),
                ..Default::default()
            };
            let wire: Vec<Bytes> = resources
                .into_iter()
                .map(|r| {
                    let plain = encode_resource(
                        r.name,
                        u64::from_str_radix(&r.version, 16).unwrap_or(0),
                        r.resource.unwrap_or_default(),
                    );
                    with_aliases(&plain, &r.aliases)
                })
                .collect();
            let response = EncodedResponse::new(ResponseFields {
                system_version_info: "42".into(),
                type_url: "type.test/Thing".into(),
                nonce: "1f".into(),
                resources: if count % 2 == 0 {
                    Resources::Listed(wire)
                } else {
                    Resources::Whole(wire.into())
                },
                removed: expected.removed_resources.clone(),
            })
            .expect("small enough");
            assert_eq!(response.summary().bytes, expected.encoded_len());
            let (bytes, chunks) = frame(response);
            let encoded = expected.encode_to_vec();
            assert_eq!(bytes[0], 0, "uncompressed");
            assert_eq!(
                bytes[1..5],
                u32::try_from(encoded.len()).unwrap_or(0).to_be_bytes()
            );
            assert_eq!(
                bytes[5..],
                encoded[..],
                "case {count} x {size} B, {removed} removed"
            );
            let largest = size + 64;
            assert!(chunks >= bytes.len() / (CHUNK + largest), "{chunks} chunks");
        }
    }

    #[test]
    fn plain_resources_share_the_store_buffer() {
        let wire = encode_resource("w".into(), 1, body(10));
        assert_eq!(with_aliases(&wire, &[]).as_ptr(), wire.as_ptr());
        let aliased = with_aliases(&wire, &["/10.0.0.1".to_string()]);
        let decoded = xds::Resource::decode(aliased).expect("valid Resource");
        assert_eq!(decoded.aliases, ["/10.0.0.1"]);
        assert_eq!(decoded.name, "w");
    }
}
