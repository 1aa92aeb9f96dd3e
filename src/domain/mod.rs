//! Types with no I/O: identifiers parsed once at the edge, languages, job states.
//! Everything else in the crate speaks in these types, so a `RunnablePath` that exists
//! anywhere has already been checked.

mod ids;
mod job;
mod script;
mod trace;

pub use ids::{InvalidId, JobId, RunnablePath, ScriptHash, Tag, Username, WorkspaceId};
pub use job::{canceled_result, contains_nul, not_queued_result, JobKind, JobStatus};
pub use script::ScriptLang;
pub use trace::TraceParent;
