//! Phoenix hooks: small, boring binaries that bring a Proxmox VE private
//! cloud up in the right order on every boot. A Step-CA container publishes
//! a readiness token for the current boot's generation; guests mount the
//! CA's state and wait for it, bounded; the host renews certificates and
//! forms the Docker Swarm, one run at a time, never writing half a file and
//! never putting a secret on a command line.
//!
//! Every binary in `src/bin/` is a thin wrapper around one function here.

pub mod ca;
pub mod cert;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod deploy;
pub mod digest;
pub mod exec;
pub mod exit;
pub mod fsutil;
pub mod guestdir;
pub mod hook;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod mount;
pub mod notify;
pub mod phoenix;
pub mod proxmox;
pub mod renew;
pub mod retry;
pub mod signal;
pub mod step;
pub mod swarm;
