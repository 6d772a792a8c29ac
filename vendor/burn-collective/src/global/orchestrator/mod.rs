pub(crate) mod base;
pub(crate) mod state;

pub use base::{
    OrchestratorMonitor, start_global_orchestrator, start_global_orchestrator_with_shutdown,
};
