//! Generated protobuf types and gRPC stubs for `chat.v1`, and the descriptor set that the servers'
//! reflection service publishes. Prost types stop at the gRPC and Kafka edges: services convert them
//! to their own domain types there.

#![allow(clippy::all, reason = "generated code")]

pub mod chat {
    pub mod v1 {
        tonic::include_proto!("chat.v1");
    }
}

pub use chat::v1;

/// The encoded `FileDescriptorSet` of every `chat.v1` file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chat_v1_descriptor");

/// A call's failure on a stream of calls carries the status its own call would have answered with.
impl From<&tonic::Status> for v1::CallFailure {
    fn from(status: &tonic::Status) -> Self {
        v1::CallFailure { code: status.code() as i32, message: status.message().to_owned() }
    }
}

impl From<v1::CallFailure> for tonic::Status {
    fn from(f: v1::CallFailure) -> Self {
        tonic::Status::new(tonic::Code::from(f.code), f.message)
    }
}
