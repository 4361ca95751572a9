//! HTTP: the server layer, the client layer, the reqwest middleware, and what they share (the
//! semantic-convention attributes, the traced response body, `x-request-id`).

mod attempt;
mod attributes;
pub(crate) mod body;
pub(crate) mod client;
pub(crate) mod request_id;
#[cfg(feature = "reqwest")]
mod reqwest;
mod routes;
mod server;

pub use attempt::Attempt;
pub(crate) use attributes::{matched_route, peer_address};
pub use body::TracedBody;
pub use client::{ClientFuture, ClientLayer, ClientService};
pub use request_id::RequestId;
#[cfg(feature = "reqwest")]
pub use reqwest::ReqwestTracing;
pub use server::{
    DEFAULT_UNTRACED_PATHS, PanicResponse, PathFilter, ResponseFuture, ServerLayer, ServerService,
};
