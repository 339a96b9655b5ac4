//! Checks that the generated code speaks CSI v1.12.0's wire format: field
//! numbers against bytes built by hand from the spec, the services and RPCs
//! in the descriptor set, and a real gRPC round trip through the generated
//! Identity server and client.

use std::collections::HashMap;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{FileDescriptorProto, FileDescriptorSet};

use crate::v1::{
    controller_client, controller_server, controller_service_capability, group_controller_client,
    group_controller_server, identity_client, identity_server, node_client, node_server,
    node_service_capability, plugin_capability, snapshot_metadata_client, snapshot_metadata_server,
    volume_capability, volume_content_source, BlockMetadataType, CapacityRange,
    CreateVolumeRequest, GetCapacityResponse, GetPluginCapabilitiesRequest,
    GetPluginCapabilitiesResponse, GetPluginInfoRequest, GetPluginInfoResponse,
    NodePublishVolumeRequest, PluginCapability, ProbeRequest, ProbeResponse, Snapshot, Topology,
    TopologyRequirement, VolumeCapability, VolumeContentSource,
};
use crate::{CSI_SPEC_VERSION, FILE_DESCRIPTOR_SET};

// ---------------------------------------------------------------------------
// Hand-built protobuf encoding, independent of prost.
// ---------------------------------------------------------------------------

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A varint field (wire type 0).
fn vi(field: u64, value: u64) -> Vec<u8> {
    [varint(field << 3), varint(value)].concat()
}

/// A length-delimited field (wire type 2): strings, messages, map entries.
fn ld(field: u64, payload: &[u8]) -> Vec<u8> {
    [
        varint((field << 3) | 2),
        varint(payload.len() as u64),
        payload.to_vec(),
    ]
    .concat()
}

/// One `map<string, string>` entry: key is field 1, value field 2.
fn entry(field: u64, key: &str, value: &str) -> Vec<u8> {
    ld(
        field,
        &[ld(1, key.as_bytes()), ld(2, value.as_bytes())].concat(),
    )
}

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Asserts that `bytes` decodes to `expected` and that prost encodes
/// `expected` to exactly `bytes`.
fn assert_wire<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8], expected: &M) {
    let decoded = M::decode(bytes).expect("hand-built bytes decode");
    assert_eq!(&decoded, expected);
    assert_eq!(expected.encode_to_vec(), bytes);
}

#[test]
fn create_volume_request_field_numbers() {
    let mount = ld(2, &ld(1, b"ext4")); // MountVolume.fs_type = 1
    let access_mode = ld(3, &vi(1, 1)); // AccessMode.mode = SINGLE_NODE_WRITER
    let bytes = [
        ld(1, b"pvc-1"),                                   // name
        ld(2, &[vi(1, 1 << 30), vi(2, 2 << 30)].concat()), // capacity_range
        ld(3, &[mount, access_mode].concat()),             // volume_capabilities
        entry(4, "tier", "fast"),                          // parameters
        entry(5, "token", "s3cr3t"),                       // secrets
        ld(6, &ld(1, &ld(1, b"snap-1"))),                  // volume_content_source.snapshot
        ld(7, &ld(1, &entry(1, "zone", "z1"))),            // accessibility_requirements.requisite
        entry(8, "iops", "3000"),                          // mutable_parameters
    ]
    .concat();

    let expected = CreateVolumeRequest {
        name: "pvc-1".into(),
        capacity_range: Some(CapacityRange {
            required_bytes: 1 << 30,
            limit_bytes: 2 << 30,
        }),
        volume_capabilities: vec![VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(
                volume_capability::MountVolume {
                    fs_type: "ext4".into(),
                    ..Default::default()
                },
            )),
            access_mode: Some(volume_capability::AccessMode {
                mode: volume_capability::access_mode::Mode::SingleNodeWriter.into(),
            }),
        }],
        parameters: map(&[("tier", "fast")]),
        secrets: map(&[("token", "s3cr3t")]),
        volume_content_source: Some(VolumeContentSource {
            r#type: Some(volume_content_source::Type::Snapshot(
                volume_content_source::SnapshotSource {
                    snapshot_id: "snap-1".into(),
                },
            )),
        }),
        accessibility_requirements: Some(TopologyRequirement {
            requisite: vec![Topology {
                segments: map(&[("zone", "z1")]),
            }],
            preferred: vec![],
        }),
        mutable_parameters: map(&[("iops", "3000")]),
    };
    assert_wire(&bytes, &expected);
}

#[test]
fn node_publish_volume_request_field_numbers() {
    let block = ld(1, &[]); // VolumeCapability.block = 1 (empty message)
    let access_mode = ld(3, &vi(1, 7)); // SINGLE_NODE_MULTI_WRITER
    let bytes = [
        ld(1, b"vol-1"),                       // volume_id
        entry(2, "lun", "3"),                  // publish_context
        ld(3, b"/staging/vol-1"),              // staging_target_path
        ld(4, b"/pods/p/volumes/vol-1"),       // target_path
        ld(5, &[block, access_mode].concat()), // volume_capability
        vi(6, 1),                              // readonly
        entry(7, "key", "k"),                  // secrets
        entry(8, "ctx", "c"),                  // volume_context
    ]
    .concat();

    let expected = NodePublishVolumeRequest {
        volume_id: "vol-1".into(),
        publish_context: map(&[("lun", "3")]),
        staging_target_path: "/staging/vol-1".into(),
        target_path: "/pods/p/volumes/vol-1".into(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(volume_capability::AccessType::Block(
                volume_capability::BlockVolume {},
            )),
            access_mode: Some(volume_capability::AccessMode {
                mode: volume_capability::access_mode::Mode::SingleNodeMultiWriter.into(),
            }),
        }),
        readonly: true,
        secrets: map(&[("key", "k")]),
        volume_context: map(&[("ctx", "c")]),
    };
    assert_wire(&bytes, &expected);
}

#[test]
fn wrappers_timestamps_and_oneofs() {
    // BoolValue: unset and false are different on the wire.
    assert_wire(&[], &ProbeResponse { ready: None });
    assert_wire(&ld(1, &[]), &ProbeResponse { ready: Some(false) });
    assert_wire(&ld(1, &vi(1, 1)), &ProbeResponse { ready: Some(true) });

    // Int64Value for the volume size bounds.
    assert_wire(
        &[vi(1, 10), ld(2, &[]), ld(3, &vi(1, 5))].concat(),
        &GetCapacityResponse {
            available_capacity: 10,
            maximum_volume_size: Some(0),
            minimum_volume_size: Some(5),
        },
    );

    // Snapshot.creation_time is a google.protobuf.Timestamp at field 4.
    assert_wire(
        &[
            ld(2, b"snap-1"),
            ld(3, b"vol-1"),
            ld(4, &[vi(1, 1_700_000_000), vi(2, 5)].concat()),
            vi(5, 1),
        ]
        .concat(),
        &Snapshot {
            snapshot_id: "snap-1".into(),
            source_volume_id: "vol-1".into(),
            creation_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            ready_to_use: true,
            ..Default::default()
        },
    );

    // PluginCapability oneof: service = 1, volume_expansion = 2.
    assert_wire(
        &ld(1, &ld(2, &vi(1, 1))),
        &GetPluginCapabilitiesResponse {
            capabilities: vec![PluginCapability {
                r#type: Some(plugin_capability::Type::VolumeExpansion(
                    plugin_capability::VolumeExpansion {
                        r#type: plugin_capability::volume_expansion::Type::Online.into(),
                    },
                )),
            }],
        },
    );
}

#[test]
fn enum_numbers() {
    use controller_service_capability::rpc::Type as Ctrl;
    use node_service_capability::rpc::Type as NodeCap;
    use plugin_capability::service::Type as Svc;
    use volume_capability::access_mode::Mode;

    assert_eq!(Mode::MultiNodeMultiWriter as i32, 5);
    assert_eq!(Mode::SingleNodeSingleWriter as i32, 6);
    assert_eq!(Mode::SingleNodeMultiWriter as i32, 7);
    assert_eq!(Svc::GroupControllerService as i32, 3);
    assert_eq!(Svc::SnapshotMetadataService as i32, 4);
    assert_eq!(Ctrl::ExpandVolume as i32, 9);
    assert_eq!(Ctrl::ModifyVolume as i32, 14);
    assert_eq!(Ctrl::GetSnapshot as i32, 15);
    assert_eq!(NodeCap::ExpandVolume as i32, 3);
    assert_eq!(NodeCap::VolumeMountGroup as i32, 6);
    assert_eq!(BlockMetadataType::VariableLength as i32, 2);
}

// ---------------------------------------------------------------------------
// The descriptor set.
// ---------------------------------------------------------------------------

fn csi_file() -> FileDescriptorProto {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let names: Vec<_> = set.file.iter().map(|f| f.name().to_owned()).collect();
    for import in [
        "google/protobuf/descriptor.proto",
        "google/protobuf/timestamp.proto",
        "google/protobuf/wrappers.proto",
    ] {
        assert!(
            names.iter().any(|n| n == import),
            "{import} missing from {names:?}"
        );
    }
    set.file
        .into_iter()
        .find(|f| f.name() == "csi.proto")
        .expect("csi.proto in descriptor set")
}

#[test]
fn descriptor_set_has_every_service_and_rpc() {
    let file = csi_file();
    assert_eq!(file.package(), "csi.v1");
    assert_eq!(CSI_SPEC_VERSION, "1.12.0");

    let expected: &[(&str, &[&str])] = &[
        (
            "Identity",
            &["GetPluginInfo", "GetPluginCapabilities", "Probe"],
        ),
        (
            "Controller",
            &[
                "CreateVolume",
                "DeleteVolume",
                "ControllerPublishVolume",
                "ControllerUnpublishVolume",
                "ValidateVolumeCapabilities",
                "ListVolumes",
                "GetCapacity",
                "ControllerGetCapabilities",
                "CreateSnapshot",
                "DeleteSnapshot",
                "ListSnapshots",
                "GetSnapshot",
                "ControllerExpandVolume",
                "ControllerGetVolume",
                "ControllerModifyVolume",
            ],
        ),
        (
            "GroupController",
            &[
                "GroupControllerGetCapabilities",
                "CreateVolumeGroupSnapshot",
                "DeleteVolumeGroupSnapshot",
                "GetVolumeGroupSnapshot",
            ],
        ),
        (
            "SnapshotMetadata",
            &["GetMetadataAllocated", "GetMetadataDelta"],
        ),
        (
            "Node",
            &[
                "NodeStageVolume",
                "NodeUnstageVolume",
                "NodePublishVolume",
                "NodeUnpublishVolume",
                "NodeGetVolumeStats",
                "NodeExpandVolume",
                "NodeGetCapabilities",
                "NodeGetInfo",
            ],
        ),
    ];

    let actual: Vec<(&str, Vec<&str>)> = file
        .service
        .iter()
        .map(|s| (s.name(), s.method.iter().map(|m| m.name()).collect()))
        .collect();
    let expected: Vec<(&str, Vec<&str>)> = expected.iter().map(|(s, m)| (*s, m.to_vec())).collect();
    assert_eq!(actual, expected);

    let counts: Vec<usize> = file.service.iter().map(|s| s.method.len()).collect();
    assert_eq!(counts, [3, 15, 4, 2, 8]);

    for service in &file.service {
        for method in &service.method {
            // Every RPC is `XRequest -> XResponse` in package csi.v1, and only
            // SnapshotMetadata streams (server side).
            let name = method.name();
            assert_eq!(method.input_type(), format!(".csi.v1.{name}Request"));
            assert_eq!(method.output_type(), format!(".csi.v1.{name}Response"));
            assert!(!method.client_streaming(), "{name}");
            assert_eq!(
                method.server_streaming(),
                service.name() == "SnapshotMetadata",
                "{name}"
            );
        }
    }
}

#[test]
fn descriptor_field_numbers_match_the_spec() {
    let file = csi_file();
    // (message, field, number, type, repeated) as spec.md defines them.
    let cases: &[(&str, &str, i32, Type, bool)] = &[
        ("CreateVolumeRequest", "name", 1, Type::String, false),
        (
            "CreateVolumeRequest",
            "capacity_range",
            2,
            Type::Message,
            false,
        ),
        (
            "CreateVolumeRequest",
            "volume_capabilities",
            3,
            Type::Message,
            true,
        ),
        ("CreateVolumeRequest", "parameters", 4, Type::Message, true),
        ("CreateVolumeRequest", "secrets", 5, Type::Message, true),
        (
            "CreateVolumeRequest",
            "mutable_parameters",
            8,
            Type::Message,
            true,
        ),
        ("Volume", "volume_id", 2, Type::String, false),
        ("Volume", "accessible_topology", 5, Type::Message, true),
        (
            "NodeStageVolumeRequest",
            "staging_target_path",
            3,
            Type::String,
            false,
        ),
        (
            "NodePublishVolumeRequest",
            "target_path",
            4,
            Type::String,
            false,
        ),
        ("NodePublishVolumeRequest", "readonly", 6, Type::Bool, false),
        (
            "NodeGetInfoResponse",
            "max_volumes_per_node",
            2,
            Type::Int64,
            false,
        ),
        ("NodeExpandVolumeRequest", "secrets", 6, Type::Message, true),
        ("ListVolumesRequest", "max_entries", 1, Type::Int32, false),
        ("Snapshot", "creation_time", 4, Type::Message, false),
        ("Snapshot", "group_snapshot_id", 6, Type::String, false),
        (
            "GetCapacityResponse",
            "minimum_volume_size",
            3,
            Type::Message,
            false,
        ),
        (
            "GetMetadataDeltaRequest",
            "max_results",
            4,
            Type::Int32,
            false,
        ),
    ];
    for &(message, field, number, ty, repeated) in cases {
        let msg = file
            .message_type
            .iter()
            .find(|m| m.name() == message)
            .unwrap_or_else(|| panic!("message {message}"));
        let f = msg
            .field
            .iter()
            .find(|f| f.name() == field)
            .unwrap_or_else(|| panic!("{message}.{field}"));
        assert_eq!(f.number(), number, "{message}.{field}");
        assert_eq!(f.r#type(), ty, "{message}.{field}");
        assert_eq!(f.label() == Label::Repeated, repeated, "{message}.{field}");
    }
}

// ---------------------------------------------------------------------------
// Generated servers and clients.
// ---------------------------------------------------------------------------

struct TestIdentity;

#[tonic::async_trait]
impl identity_server::Identity for TestIdentity {
    async fn get_plugin_info(
        &self,
        _request: tonic::Request<GetPluginInfoRequest>,
    ) -> Result<tonic::Response<GetPluginInfoResponse>, tonic::Status> {
        Ok(tonic::Response::new(GetPluginInfoResponse {
            name: "ballast.example.com".into(),
            vendor_version: CSI_SPEC_VERSION.into(),
            manifest: HashMap::new(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: tonic::Request<GetPluginCapabilitiesRequest>,
    ) -> Result<tonic::Response<GetPluginCapabilitiesResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn probe(
        &self,
        _request: tonic::Request<ProbeRequest>,
    ) -> Result<tonic::Response<ProbeResponse>, tonic::Status> {
        Ok(tonic::Response::new(ProbeResponse { ready: Some(true) }))
    }
}

/// Compile-time check: every service has a server wrapper over its trait.
#[allow(dead_code)]
fn servers_wrap_their_traits<C, G, M, N>(
    c: C,
    g: G,
    m: M,
    n: N,
) -> (
    controller_server::ControllerServer<C>,
    group_controller_server::GroupControllerServer<G>,
    snapshot_metadata_server::SnapshotMetadataServer<M>,
    node_server::NodeServer<N>,
)
where
    C: controller_server::Controller,
    G: group_controller_server::GroupController,
    M: snapshot_metadata_server::SnapshotMetadata,
    N: node_server::Node,
{
    (
        controller_server::ControllerServer::new(c),
        group_controller_server::GroupControllerServer::new(g),
        snapshot_metadata_server::SnapshotMetadataServer::new(m),
        node_server::NodeServer::new(n),
    )
}

#[test]
fn service_names_are_the_grpc_paths() {
    assert_eq!(identity_server::SERVICE_NAME, "csi.v1.Identity");
    assert_eq!(controller_server::SERVICE_NAME, "csi.v1.Controller");
    assert_eq!(
        group_controller_server::SERVICE_NAME,
        "csi.v1.GroupController"
    );
    assert_eq!(
        snapshot_metadata_server::SERVICE_NAME,
        "csi.v1.SnapshotMetadata"
    );
    assert_eq!(node_server::SERVICE_NAME, "csi.v1.Node");

    // Clients exist for every service and wrap a tonic channel.
    type Ch = tonic::transport::Channel;
    let _: fn(Ch) -> identity_client::IdentityClient<Ch> = identity_client::IdentityClient::new;
    let _: fn(Ch) -> controller_client::ControllerClient<Ch> =
        controller_client::ControllerClient::new;
    let _: fn(Ch) -> group_controller_client::GroupControllerClient<Ch> =
        group_controller_client::GroupControllerClient::new;
    let _: fn(Ch) -> snapshot_metadata_client::SnapshotMetadataClient<Ch> =
        snapshot_metadata_client::SnapshotMetadataClient::new;
    let _: fn(Ch) -> node_client::NodeClient<Ch> = node_client::NodeClient::new;
}

#[tokio::test]
async fn identity_round_trip_over_loopback() {
    use std::time::Duration;
    use tonic::transport::server::TcpIncoming;

    let incoming =
        TcpIncoming::bind("127.0.0.1:0".parse().expect("loopback address")).expect("bind loopback");
    let addr = incoming.local_addr().expect("bound address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(identity_server::IdentityServer::new(TestIdentity))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );

    let calls = async {
        let mut client = identity_client::IdentityClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let info = client
            .get_plugin_info(GetPluginInfoRequest {})
            .await
            .expect("GetPluginInfo")
            .into_inner();
        assert_eq!(info.name, "ballast.example.com");
        assert_eq!(info.vendor_version, CSI_SPEC_VERSION);

        let probe = client.probe(ProbeRequest {}).await.expect("Probe");
        assert_eq!(probe.into_inner().ready, Some(true));

        let caps = client
            .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
            .await
            .expect_err("unimplemented");
        assert_eq!(caps.code(), tonic::Code::Unimplemented);
    };
    tokio::time::timeout(Duration::from_secs(20), calls)
        .await
        .expect("calls finish in time");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("server stops in time")
        .expect("server task")
        .expect("server ran cleanly");
}
