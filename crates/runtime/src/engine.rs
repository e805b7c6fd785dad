//! The one wasmtime `Engine` of the process and its epoch ticker.
//!
//! Settings here are engine-wide by wasmtime's design (stack size, fuel
//! metering, the instance pool); per-pipeline limits live in
//! [`super::Limits`] and are enforced per `Store`.

use std::num::NonZeroUsize;
use std::thread;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
};

/// The `[runtime]` section: process-wide Wasm engine settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Largest wasm stack a guest may use, in KiB; deeper recursion traps
    /// with `stack-overflow`. Engine-wide in wasmtime, so one value for all.
    pub max_stack_kb: u32,
    /// Instances the pooling allocator keeps slots for (across pipelines).
    /// When all are busy, instantiation fails and the record is retried.
    pub pool_instances: u32,
    /// Granularity of the wall-clock deadline: a record may overrun its
    /// `timeout_ms` by up to one tick.
    pub epoch_tick_ms: u32,
    /// Compile with fuel metering so pipelines may set `limits.fuel`.
    /// Costs some speed; on automatically when any pipeline sets fuel.
    pub fuel: bool,
    /// Guest frames kept in a failure's backtrace.
    pub max_backtrace_frames: u32,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            max_stack_kb: default_max_stack_kb(),
            pool_instances: default_pool_instances(),
            epoch_tick_ms: default_epoch_tick_ms(),
            fuel: false,
            max_backtrace_frames: default_max_backtrace_frames(),
        }
    }
}

/// Freed instance slots whose memory is returned to the OS together.
const DECOMMIT_BATCH: usize = 32;

/// With PAGEMAP_SCAN: bytes of a freed slot's linear memory and tables
/// reset in place rather than returned to the OS.
const KEEP_RESIDENT_MEMORY: usize = 1 << 20;
const KEEP_RESIDENT_TABLE: usize = 64 << 10;

const fn default_max_stack_kb() -> u32 {
    512
}
const fn default_pool_instances() -> u32 {
    256
}
const fn default_epoch_tick_ms() -> u32 {
    2
}
const fn default_max_backtrace_frames() -> u32 {
    32
}

/// Builds the engine and starts the ticker that drives every deadline.
pub(crate) fn build(settings: &EngineSettings) -> anyhow::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    let instances = settings.pool_instances.max(1);
    pool.total_component_instances(instances)
        // A component made by wasm-component-ld holds a handful of core
        // instances (the program, its WASI shims and fixups).
        .max_core_instances_per_component(32)
        .total_core_instances(instances.saturating_mul(8))
        .max_memories_per_component(4)
        .total_memories(instances.saturating_mul(2))
        .max_tables_per_component(8)
        .total_tables(instances.saturating_mul(4))
        // No pool-level cap: each Store enforces its pipeline's memory_mb.
        .max_memory_size(4 << 30)
        // Return freed slots' memory in batches: each `madvise` costs a TLB
        // shootdown across cores, the dominant cost of a fresh instance.
        .decommit_batch_size(DECOMMIT_BATCH);
    let pagemap_scan = PoolingAllocationConfig::is_pagemap_scan_available();
    tracing::debug!(pagemap_scan, "Configuring the Wasm instance pool.");
    if pagemap_scan {
        // Linux 6.7+: a freed slot's dirty pages are found with the
        // PAGEMAP_SCAN ioctl and reset in place (up to the sizes below),
        // with no `madvise` and no page faults on the next instance: a
        // fresh instance costs about half as much (BENCHMARKS.md). RSS stays
        // bounded: at most this much per slot ever used, the rest of a
        // slot (a guest that grew further) is still returned to the OS.
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
            .table_keep_resident(KEEP_RESIDENT_TABLE);
    } else {
        // Without it, resetting resident memory means zeroing all of it,
        // which was measured slower than the page faults it saves: freed
        // slots return all their memory to the OS.
        pool.linear_memory_keep_resident(0).table_keep_resident(0);
    }

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .cranelift_opt_level(OptLevel::Speed)
        .epoch_interruption(true)
        .consume_fuel(settings.fuel)
        .max_wasm_stack(settings.max_stack_kb as usize * 1024)
        .wasm_backtrace_max_frames(NonZeroUsize::new(settings.max_backtrace_frames as usize))
        // Dead letters name each frame's function, not its bytecode offset:
        // without the map a trap's backtrace skips a linear search of it
        // per frame (about a sixth of a trap's cost, BENCHMARKS.md).
        .generate_address_map(false)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config)
        .map_err(anyhow::Error::from)
        .with_context(|| {
            // The pool reserves address space for two linear memories of up
            // to 4 GiB per slot: tens of thousands of slots exhaust it.
            format!(
                "configuring the wasmtime engine with an instance pool of \
                 `runtime.pool_instances` = {instances} (about 8 GiB of address space each)"
            )
        })?;
    start_ticker(
        &engine,
        Duration::from_millis(u64::from(settings.epoch_tick_ms.max(1))),
    )?;
    Ok(engine)
}

/// One thread per engine bumps the epoch; it ends when the engine is dropped.
fn start_ticker(engine: &Engine, tick: Duration) -> anyhow::Result<()> {
    let weak = engine.weak();
    thread::Builder::new()
        .name("sandpiper-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                thread::sleep(tick);
            }
        })
        .context("starting the epoch ticker thread")?;
    Ok(())
}
