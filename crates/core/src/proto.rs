//! Generated code of `proto/ember.proto`. Only the edges of the system (the gRPC
//! services and the plan codec) use these types; the rest uses ember's own.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("ember.v1");
