//! Flows (Windmill's OpenFlow): a definition checked once (`model`), JavaScript transforms and
//! predicates (`expr`), a pure state machine (`machine`, over `state`) that says which step jobs
//! to enqueue next, the public `flow_status` derived from it (`status`), and the one impure part
//! (`driver`) that runs transitions in PostgreSQL and publishes their step jobs.
//!
//! A flow job is started by whichever worker pulls it; each step is a job of its own, run by any
//! worker; the worker that records a step's end then runs the flow's transition, and acks the
//! step's JetStream message only after it committed. A redelivered message finds the transition
//! done and only re-publishes what it had enqueued and is still queued.

pub mod driver;
pub mod expr;
pub mod machine;
pub mod model;
pub mod state;
pub mod status;

pub use model::{FlowDef, InvalidFlow};
