//! Small pieces the stages share: a resizable cap on held places ([`cap`]), the one clock
//! ([`clock`]), buffers kept for reuse ([`reuse`]) and named tasks ([`stage`]).

pub(crate) mod cap;
pub(crate) mod clock;
pub(crate) mod reuse;
pub(crate) mod stage;
pub(crate) mod units;
