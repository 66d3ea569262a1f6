//! vfi-orchestrator: runs batch tasks as Kubernetes Jobs from a REST API, with history in
//! PostgreSQL.
//!
//! Arrows point one way: `http` -> `store`/`domain`; `domain` depends on nothing.

pub mod app;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dev;
pub mod domain;
pub mod error;
pub mod http;
pub mod logs;
pub mod outbound;
pub mod runtime;
pub mod store;
pub mod telemetry;
