//! Wire types of Sonde: Deep's protocol (deep-proto 1.0.5, byte-compatible with Deep's agents and
//! server) and Sonde's own extension services under `sonde.v1`.
//!
//! Every message serializes as binary protobuf (prost) and as proto3 JSON (serde, through pbjson),
//! which is what Deep's HTTP API and Grafana data source speak:
//!
//! ```
//! use sonde_proto::tracepoint::TracePointConfig;
//!
//! let json = r#"{"path": "src/checkout.rs", "line_number": 42, "args": {"fire_count": "-1"}}"#;
//! let tp: TracePointConfig = serde_json::from_str(json).unwrap();
//! assert_eq!(tp.line_number, 42);
//! assert_eq!(
//!     serde_json::to_string(&tp).unwrap(),
//!     r#"{"path":"src/checkout.rs","lineNumber":42,"args":{"fire_count":"-1"}}"#
//! );
//! ```

/// Generated code, one module per protobuf package.
pub mod pb {
    /// Deep's packages (`deepproto.proto.*`).
    pub mod deepproto {
        /// `deepproto.proto.*`
        pub mod proto {
            /// `deepproto.proto.common`
            pub mod common {
                /// `deepproto.proto.common.v1`
                #[allow(clippy::all, missing_docs)] // generated code
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/deepproto.proto.common.v1.rs"));
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/deepproto.proto.common.v1.serde.rs"
                    ));
                }
            }
            /// `deepproto.proto.resource`
            pub mod resource {
                /// `deepproto.proto.resource.v1`
                #[allow(clippy::all, missing_docs)] // generated code
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/deepproto.proto.resource.v1.rs"));
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/deepproto.proto.resource.v1.serde.rs"
                    ));
                }
            }
            /// `deepproto.proto.tracepoint`
            pub mod tracepoint {
                /// `deepproto.proto.tracepoint.v1`
                #[allow(clippy::all, missing_docs)] // generated code
                pub mod v1 {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/deepproto.proto.tracepoint.v1.rs"
                    ));
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/deepproto.proto.tracepoint.v1.serde.rs"
                    ));
                }
            }
            /// `deepproto.proto.poll`
            pub mod poll {
                /// `deepproto.proto.poll.v1`
                #[allow(clippy::all, missing_docs)] // generated code
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/deepproto.proto.poll.v1.rs"));
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/deepproto.proto.poll.v1.serde.rs"
                    ));
                }
            }
        }
    }

    /// Sonde's extension packages.
    pub mod sonde {
        /// `sonde.v1`
        #[allow(clippy::all, missing_docs)] // generated code
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/sonde.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/sonde.v1.serde.rs"));
        }
    }
}

/// The encoded `FileDescriptorSet` of every proto in this crate (for gRPC reflection and tools).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

pub use pb::deepproto::proto::common::v1 as common;
pub use pb::deepproto::proto::poll::v1 as poll;
pub use pb::deepproto::proto::resource::v1 as resource;
pub use pb::deepproto::proto::tracepoint::v1 as tracepoint;
pub use pb::sonde::v1 as sonde;

mod paths;
pub use paths::path_matches;
