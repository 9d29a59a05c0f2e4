//! Routing to devices: [`presence`] says which gateway holds each device (written by gateways, read by
//! delivery workers and by gateways routing typing indicators); [`push`] reaches a gateway's
//! `GatewayService` with a deadline. Shared by the gateway and the delivery worker, which both route.

pub mod presence;
pub mod push;

pub use presence::{Holder, Presence};
pub use push::Pushers;
