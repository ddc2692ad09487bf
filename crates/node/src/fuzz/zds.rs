//! The `zds_node` target: the capture agent's requests as the node proxy decodes them.
//!
//! Input: byte 0 says how many descriptors arrive with the datagram (0, 1 or 2, as
//! `/dev/null`s); the rest is the datagram. Invariants checked:
//! - nothing panics, on any datagram with any descriptors;
//! - every descriptor is closed or handed on: an `AddWorkload` keeps exactly its one, anything
//!   else keeps none;
//! - an `AddWorkload` has a uid; a refusal names the request, the uid and the count it refuses;
//! - a decoded request, encoded again as the agent encodes it, decodes to the same request.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use ambit_proto::zds::{
    AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, WorkloadInfo, WorkloadRequest,
    workload_request::Payload,
};
use prost::Message;

use crate::inpod::zds::Request;
use crate::inpod::{PodInfo, RequestError};

/// The body of the `zds_node` target.
pub fn zds_node(data: &[u8]) {
    let Some((count, datagram)) = data.split_first() else {
        return;
    };
    let fds = descriptors(usize::from(*count % 3));
    let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    match Request::decode(datagram, fds) {
        Ok(request) => {
            if let Request::Add { uid, netns, .. } = &request {
                assert!(!uid.is_empty());
                assert_eq!(
                    raw,
                    [netns.as_raw_fd()],
                    "AddWorkload keeps its one descriptor"
                );
            }
            let again = encode(&request);
            let decoded = Request::decode(
                &again,
                descriptors(usize::from(matches!(request, Request::Add { .. }))),
            )
            .unwrap_or_else(|e| panic!("a request encoded again does not decode: {e}"));
            assert_eq!(summary(&decoded), summary(&request));
        }
        Err(error) => {
            let text = error.to_string();
            match &error {
                RequestError::Descriptors { uid, count } => {
                    assert_eq!(*count, raw.len());
                    assert!(text.contains(uid.as_str()) || text.contains(&format!("{uid:?}")));
                }
                RequestError::Decode { len, .. } => assert_eq!(*len, datagram.len()),
                _ => assert!(!text.is_empty()),
            }
        }
    }
}

/// `n` open descriptors (of `/dev/null`), as SCM_RIGHTS would deliver them.
fn descriptors(n: usize) -> Vec<OwnedFd> {
    (0..n)
        .map(|_| {
            File::open("/dev/null")
                .map(OwnedFd::from)
                .unwrap_or_else(|e| panic!("/dev/null: {e}"))
        })
        .collect()
}

/// The request as the capture agent writes it.
fn encode(request: &Request) -> Vec<u8> {
    let payload = match request {
        Request::Add { uid, info, .. } => Payload::Add(AddWorkload {
            uid: uid.clone(),
            workload_info: Some(WorkloadInfo {
                name: info.name.clone(),
                namespace: info.namespace.clone(),
                service_account: info.service_account.clone(),
                windows_namespace: None,
            }),
        }),
        Request::Keep { uid } => Payload::Keep(KeepWorkload { uid: uid.clone() }),
        Request::Del { uid } => Payload::Del(DelWorkload { uid: uid.clone() }),
        Request::SnapshotSent => Payload::SnapshotSent(SnapshotSent {}),
    };
    WorkloadRequest {
        payload: Some(payload),
    }
    .encode_to_vec()
}

/// A request without its descriptor, to compare.
fn summary(request: &Request) -> (&'static str, &str, Option<&PodInfo>) {
    match request {
        Request::Add { uid, info, .. } => ("add", uid, Some(info)),
        Request::Keep { uid } => ("keep", uid, None),
        Request::Del { uid } => ("del", uid, None),
        Request::SnapshotSent => ("snapshot", "", None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's requests, encoded as the agent encodes them, with and without descriptors.
    fn generated() -> Vec<(String, Vec<u8>)> {
        let info = PodInfo {
            name: "web-0".to_owned(),
            namespace: "default".to_owned(),
            service_account: "web".to_owned(),
        };
        let netns = || descriptors(1).remove(0);
        let requests = [
            (
                "add",
                Request::Add {
                    uid: "uid-1".to_owned(),
                    info,
                    netns: netns(),
                },
                1,
            ),
            (
                "add-without-fd",
                Request::Add {
                    uid: "uid-2".to_owned(),
                    info: PodInfo::default(),
                    netns: netns(),
                },
                0,
            ),
            (
                "keep",
                Request::Keep {
                    uid: "uid-1".to_owned(),
                },
                0,
            ),
            (
                "keep-with-fd",
                Request::Keep {
                    uid: "uid-1".to_owned(),
                },
                1,
            ),
            (
                "del",
                Request::Del {
                    uid: "uid-1".to_owned(),
                },
                0,
            ),
            ("snapshot-sent", Request::SnapshotSent, 0),
        ];
        let mut seeds: Vec<(String, Vec<u8>)> = requests
            .into_iter()
            .map(|(name, request, fds)| {
                let mut seed = vec![fds];
                seed.extend(encode(&request));
                (name.to_owned(), seed)
            })
            .collect();
        seeds.push(("empty-request".to_owned(), vec![0]));
        seeds
    }

    #[test]
    fn seed_corpus() {
        ambit_testkit::corpus::run("zds_node", generated(), zds_node);
    }
}
