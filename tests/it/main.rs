//! Integration tests: one binary (links once), one module per behaviour.

mod common;

mod api_fuzz;
mod backpressure;
mod bad_input;
mod chaos;
mod dev_command;
mod events;
mod fencing;
mod flow_durability;
mod flows;
mod identity;
mod isolation;
mod jobs_api;
mod local_services;
mod metrics;
mod nats_auth;
mod openapi;
mod payloads;
mod permissions;
mod queue;
mod run_async;
mod run_stream;
mod run_sync;
mod runs_page;
mod runtimes;
mod scheduled;
mod scripts;
mod storage_endpoints;
mod uploads;
mod warm;
mod webhook_triggers;
mod wmill_client;
mod worker_crash;
