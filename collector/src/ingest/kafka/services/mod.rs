//! The fleet's second stage (`docs/fleet.md`): the weights and instances of each service
//! computed once, by the collector that owns the service, and served the same by every
//! collector.
//!
//! With spans partitioned by trace id, every collector sees a share of every service. Each one
//! sends, every weight period, its share's figures per server service to the partials topic,
//! keyed by the service ([`send`]); a second consumer group over that topic makes one collector
//! the owner of each service, which sums the partials exactly, runs the weights rule and
//! publishes the service's weights and instances to the compacted views topic, fenced by its
//! claim ([`owner`], what it writes and when: [`publish`]); every collector reads the views topic in full and serves it ([`view`]).
//! The service graph's figures travel the same way, per minute ([`topology`]).

mod owner;
mod partial;
mod publish;
mod send;
mod topology;
mod view;

pub(crate) use owner::Owner;
pub(crate) use send::PartialSender;
pub(crate) use view::{Views, read_views};
