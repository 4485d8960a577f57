//! The process and its surroundings: the metrics exposition, logging
//! set-up, systemd notification, inherited sockets and dropping root.

pub mod metrics;
pub mod system;
pub mod telemetry;
