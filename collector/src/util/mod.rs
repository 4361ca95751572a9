//! Small pieces the stages share: a resizable cap on held places ([`cap`]), the one clock
//! ([`clock`]), buffers kept for reuse ([`reuse`]) and supervised tasks ([`tasks`]).

pub(crate) mod cap;
pub(crate) mod clock;
pub(crate) mod reuse;
pub(crate) mod settings;
pub(crate) mod tasks;
pub(crate) mod units;
