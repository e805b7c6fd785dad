//! Calling a plugin: one [`Instance`] per worker, turning every call into an
//! [`Outcome`].
//!
//! An instance is not shared between threads; the pipeline keeps one per
//! plugin thread. It must never let a guest fault escape as a panic or an
//! error: every path ends in outputs or a typed [`Failure`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wasmtime::component::WasmList;
use wasmtime::{AsContextMut, Store, StoreContextMut, Trap, WasmBacktrace};

use super::EngineSettings;
use super::host::{BatchCall, Bindings, HostState, Message, RecordContext, WitFailure, WitOutput};
use super::limits::{Isolation, Limits};
use super::{Plugin, PluginId};
use sandpiper_core::record::{Failure, FailureKind, Outcome, Output, Record};

/// Records per `handle-batch` call, at most: a whole batch of the
/// pipeline's (`pipeline::partition::BATCH`) in one call.
const BATCH_RECORDS: usize = 256;

/// Bytes of encoded records per `handle-batch` call, at most (a larger
/// record goes alone): the guest holds the whole batch at once, under its
/// memory cap, so large records go in small batches; and after a trap the
/// rest of a call's records are copied again, into a fresh instance.
/// 64 KiB holds a full batch of 100-byte records; 1 KB records go about
/// 60 to a call, whose fixed cost is then a small share of theirs.
const BATCH_BYTES: usize = 64 << 10;

/// Under per-record isolation, instances made one after another in one
/// store, at most: each serves one record and stays in the store, unused,
/// until the store is dropped with all of them. A new store and the
/// registration of the component's modules in it cost about a tenth of a
/// fresh instance (BENCHMARKS.md); more than 8 saved nothing more.
pub(super) const INSTANCES_PER_STORE: u32 = 8;

/// Linear memory (high-water marks, summed) of the instances one store may
/// hold under per-record isolation: a guest that grows large gets a store
/// to itself sooner.
const MEMORY_PER_STORE: usize = 32 << 20;

/// A live guest: its store and bindings, plus what recycling looks at.
struct Live {
    store: Store<HostState>,
    bindings: Bindings,
    created: Instant,
    records: u64,
    /// The instances made in `store` before this one.
    earlier: Spent,
}

/// Instances in a store that have served their record (per-record
/// isolation), and their linear memory's high-water marks, summed.
#[derive(Debug, Clone, Copy, Default)]
struct Spent {
    instances: u32,
    memory: usize,
}

/// A store whose instances have all served their record, kept for the next
/// record's instance (per-record isolation).
struct Held {
    store: Store<HostState>,
    spent: Spent,
}

/// A `handle-batch` call's buffers, kept by the [`Instance`] across calls
/// and across the stores that traps replace: once grown, a call allocates
/// nothing for them, and after a trap the records not yet run go on to the
/// fresh instance as they were encoded.
#[derive(Default)]
struct Batch {
    /// Records in the `handle-batch` layout, back to back.
    encoded: Vec<u8>,
    /// Where each record's encoding ends in `encoded`.
    ends: Vec<usize>,
    /// Where the records of a call came from, in order (in the store's
    /// [`BatchCall`] while the call runs).
    contexts: Vec<RecordContext>,
    /// Their outcomes so far (likewise).
    outcomes: Vec<(Outcome, Instant)>,
}

impl Batch {
    /// Encodes records from the front of `records`, as many as fit one
    /// call ([`BATCH_BYTES`]; at least one), and says how many.
    fn encode(&mut self, records: &[Record]) -> usize {
        self.encoded.clear();
        self.ends.clear();
        for record in records {
            let start = self.encoded.len();
            encode(record, &mut self.encoded);
            if !self.ends.is_empty() && self.encoded.len() > BATCH_BYTES {
                self.encoded.truncate(start);
                break;
            }
            self.ends.push(self.encoded.len());
        }
        self.ends.len()
    }

    /// One `handle-batch` call on `records`, encoded from index `first`
    /// on. Returns the call's result and whether it ended on a record that
    /// was never reported (the guest trapped or returned on it); the
    /// outcomes reported are in `self.outcomes`.
    fn call(
        &mut self,
        live: &mut Live,
        records: &[Record],
        first: usize,
        cancel: &CancellationToken,
        until: Instant,
    ) -> (wasmtime::Result<()>, bool) {
        // Reusing the topics' buffers from the last call.
        self.contexts
            .resize_with(records.len(), RecordContext::default);
        for (context, record) in self.contexts.iter_mut().zip(records) {
            context.topic.clone_from(&record.topic);
            context.partition = record.partition;
            context.offset = record.offset;
        }
        let state = live.store.data_mut();
        let call = &mut state.batch;
        std::mem::swap(&mut call.records, &mut self.contexts);
        std::mem::swap(&mut call.outcomes, &mut self.outcomes);
        call.outcomes.clear();
        call.cancel = cancel.clone();
        call.cancel_checked = None;
        call.until = until;
        call.open = true;
        state.begin_batch_record(0);
        let arm = state.batch.arm;
        arm.apply(&mut live.store);
        let Bindings::Batch(bindings) = &live.bindings else {
            unreachable!("a plugin of the batch world has batch bindings");
        };
        let start = first.checked_sub(1).map_or(0, |i| self.ends[i]);
        let end = self.ends[first + records.len() - 1];
        let result = bindings.call_handle_batch(&mut live.store, &self.encoded[start..end]);
        let call = &mut live.store.data_mut().batch;
        std::mem::swap(&mut call.records, &mut self.contexts);
        std::mem::swap(&mut call.outcomes, &mut self.outcomes);
        (result, std::mem::take(&mut call.open))
    }
}

/// Calls one plugin, instantiating it lazily and replacing it after a trap.
pub struct Instance {
    plugin: Arc<Plugin>,
    live: Option<Live>,
    /// Buffers of `handle-batch` calls.
    batch: Batch,
    /// Instantiations so far (for metrics and tests).
    instantiations: u64,
    /// Calls into the plugin so far, `handle` or `handle-batch` (for tests).
    calls: u64,
    /// Demangled guest function names, kept across instances.
    names: FrameNames,
    /// The data of the last store dropped, for the next one
    /// ([`HostState::reuse`]).
    spare: Option<HostState>,
    /// Under per-record isolation, the store the next instance is made in.
    held: Option<Held>,
    /// Stores made so far (for tests).
    stores: u64,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("plugin", &self.plugin.id)
            .field("live", &self.live.is_some())
            .field("instantiations", &self.instantiations)
            .finish()
    }
}

impl Instance {
    pub fn new(plugin: Arc<Plugin>) -> Self {
        Self {
            plugin,
            live: None,
            batch: Batch::default(),
            instantiations: 0,
            calls: 0,
            names: FrameNames::default(),
            spare: None,
            held: None,
            stores: 0,
        }
    }

    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Instances made so far (an attempt that failed made none).
    pub fn instantiations(&self) -> u64 {
        self.instantiations
    }

    /// Calls into the plugin so far: one per record, or one per
    /// `handle-batch` call (several per [`Instance::handle_batch`] after a
    /// trap or at the recycling count).
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Stores made so far: one per instance, except under per-record
    /// isolation, where one store holds up to [`INSTANCES_PER_STORE`].
    pub fn stores(&self) -> u64 {
        self.stores
    }

    /// Drops the instances that have served their record under per-record
    /// isolation (they wait in their store to be dropped together),
    /// returning their slots to the instance pool. The plugin threads call
    /// it when a job ends, so that an idle thread holds no more than one
    /// instance, as under reuse.
    pub fn release_spent(&mut self) {
        if let Some(held) = self.held.take() {
            self.retire(held.store);
        }
    }

    /// Instantiates now rather than on the first record.
    pub fn warm(&mut self) -> Result<(), Failure> {
        if self.live.is_none() {
            self.live = Some(self.instantiate()?);
        }
        Ok(())
    }

    /// Runs one record through the plugin. Never panics on guest behaviour.
    pub fn handle(&mut self, record: &Record) -> Outcome {
        self.handle_in_place(&mut record.clone())
    }

    /// [`Instance::handle`] without copying the record: its buffers are
    /// moved into the call's arguments and back, so `record` is unchanged
    /// afterwards (the pipeline's hot path).
    pub fn handle_in_place(&mut self, record: &mut Record) -> Outcome {
        let mut live = match self.live.take() {
            Some(live) => live,
            None => self.instantiate()?,
        };
        let plugin = &self.plugin;
        let limits = &plugin.settings.limits;
        live.store
            .data_mut()
            .begin(&record.topic, record.partition, record.offset);
        plugin.arm.apply(&mut live.store);
        live.records += 1;

        let message = Message {
            topic: std::mem::take(&mut record.topic),
            partition: record.partition,
            offset: record.offset,
            timestamp: record.timestamp,
            key: record.key.take(),
            value: record.value.take(),
            headers: std::mem::take(&mut record.headers),
        };
        self.calls += 1;
        let result = live.bindings.call_handle(&mut live.store, &message);
        record.topic = message.topic;
        record.key = message.key;
        record.value = message.value;
        record.headers = message.headers;
        let state = live.store.data_mut();
        state.warn_suppressed_logs();
        let outcome = match result {
            Ok(answer) => outcome(
                answer,
                limits.max_outputs,
                limits.max_output_bytes,
                &plugin.id,
            ),
            Err(error) => {
                // A trap poisons the store: this instance is never used again.
                let failure = classify(&error, state, plugin, &mut self.names);
                self.put_back(live, false);
                return Err(failure.into());
            }
        };
        self.put_back(live, true);
        outcome
    }

    /// Runs records from the front of `records` through the plugin and
    /// appends their outcomes to `outcomes`, in order, each with the time it
    /// ended: at least one record's, and more in one call when the plugin
    /// implements the batch world. After a trap the records after the one
    /// that trapped go on, in the same call of this method, to a fresh
    /// instance. The records beyond are not run (the batch stopped early: a
    /// retry, `cancel`, a record that ended after `until`, a size bound);
    /// run them in a later call. As in [`Instance::handle_in_place`], the
    /// records' buffers may go into the call and come back unchanged.
    pub fn handle_batch(
        &mut self,
        records: &mut [Record],
        cancel: &CancellationToken,
        until: Instant,
        outcomes: &mut Vec<(Outcome, Instant)>,
    ) {
        if records.is_empty() {
            return;
        }
        if !self.plugin.pre.is_batch()
            || records.len() == 1
            || self.plugin.settings.isolation == Isolation::PerRecord
        {
            let outcome = self.handle_in_place(&mut records[0]);
            outcomes.push((outcome, Instant::now()));
            return;
        }
        // Encoded once: after a trap the rest go on as they were encoded.
        let n = self
            .batch
            .encode(&records[..records.len().min(BATCH_RECORDS)]);
        let mut from: usize = 0;
        loop {
            let mut live = match self.live.take() {
                Some(live) => live,
                None => match self.instantiate() {
                    Ok(live) => live,
                    Err(failure) => {
                        outcomes.push((Err(failure.into()), Instant::now()));
                        return;
                    }
                },
            };
            // Never past the instance's recycling count.
            let recycle = &self.plugin.settings.recycle;
            let left = recycle.max_records.saturating_sub(live.records);
            let left = usize::try_from(left).unwrap_or(usize::MAX).max(1);
            let to = n.min(from.saturating_add(left));
            self.calls += 1;
            let (result, ended_on_a_record) =
                self.batch
                    .call(&mut live, &records[from..to], from, cancel, until);
            let ran = self.batch.outcomes.len();
            live.records += ran as u64;
            outcomes.append(&mut self.batch.outcomes);
            from += ran;
            let plugin = &self.plugin;
            let state = live.store.data_mut();
            if ended_on_a_record {
                state.warn_suppressed_logs();
                live.records += 1;
                from += 1;
                let failure = match &result {
                    // The record being handled trapped; the rest run on a
                    // fresh instance.
                    Err(error) => classify(error, state, plugin, &mut self.names),
                    // The guest returned without reporting the record it was
                    // on: name it, so the batch moves on.
                    Ok(()) => Failure {
                        trap: Some("unreported".into()),
                        ..Failure::new(
                            FailureKind::Trap,
                            "handle-batch returned without reporting this record's outcome",
                            plugin.id.clone(),
                        )
                    },
                };
                outcomes.push((Err(failure.into()), Instant::now()));
            }
            // A trap poisons the store, even one after the last record.
            let trapped = result.is_err();
            let all_ran = !ended_on_a_record && !trapped && from == to;
            self.put_back(live, !trapped);
            // Go on with the records encoded after a trap, or past the
            // recycling count; any other early end returns to the caller.
            let go_on = (ended_on_a_record && trapped) || all_ran;
            if !go_on || from >= n || cancel.is_cancelled() || Instant::now() >= until {
                return;
            }
        }
    }

    /// Whether a healthy instance may serve the next record.
    fn keep(&self, live: &Live) -> bool {
        let settings = &self.plugin.settings;
        if settings.isolation == Isolation::PerRecord {
            return false;
        }
        let recycle = &settings.recycle;
        let peak = live.store.data().limiter.peak_memory;
        live.records < recycle.max_records
            && live.created.elapsed() < Duration::from_secs(recycle.max_age_secs)
            && recycle
                .max_memory_mb
                .is_none_or(|mb| peak <= mb as usize * (1 << 20))
    }

    /// After a call: keeps a healthy guest for the next record unless it
    /// is due for recycling; otherwise drops it (a trap poisons its store),
    /// keeping the store's data for the next one ([`HostState::reuse`]).
    /// Under per-record isolation a healthy guest's store is kept, with the
    /// guest in it, for the next record's instance, within
    /// [`INSTANCES_PER_STORE`] and [`MEMORY_PER_STORE`].
    fn put_back(&mut self, live: Live, healthy: bool) {
        if healthy && self.keep(&live) {
            self.live = Some(live);
            return;
        }
        let Live { store, earlier, .. } = live;
        if healthy && self.plugin.settings.isolation == Isolation::PerRecord {
            let spent = Spent {
                instances: earlier.instances + 1,
                memory: earlier.memory + store.data().limiter.peak_memory,
            };
            if spent.instances < INSTANCES_PER_STORE && spent.memory <= MEMORY_PER_STORE {
                self.held = Some(Held { store, spent });
                return;
            }
        }
        self.retire(store);
    }

    /// Drops a store and its instances, keeping its data for the next one
    /// ([`HostState::reuse`]).
    fn retire(&mut self, store: Store<HostState>) {
        self.spare = Some(store.into_data());
    }

    /// A new store for the next instance, with the last one's data if any.
    fn new_store(&mut self) -> Store<HostState> {
        let plugin = &self.plugin;
        let settings = &plugin.settings;
        let state = match self.spare.take() {
            Some(mut state) => {
                state.reuse(&settings.limits);
                state
            }
            None => HostState::new(
                plugin.id.clone(),
                &settings.limits,
                plugin.arm,
                settings.config.clone(),
            ),
        };
        let mut store = Store::new(&plugin.engine, state);
        store.limiter(|s| &mut s.limiter);
        // Start functions run under the same deadline and fuel as a record.
        store.epoch_deadline_trap();
        self.stores += 1;
        store
    }

    fn instantiate(&mut self) -> Result<Live, Failure> {
        let (mut store, earlier) = match self.held.take() {
            Some(Held { mut store, spent }) => {
                store.data_mut().reuse(&self.plugin.settings.limits);
                (store, spent)
            }
            None => (self.new_store(), Spent::default()),
        };
        let plugin = &self.plugin;
        plugin.arm.apply(&mut store);
        match plugin.pre.instantiate(&mut store) {
            Ok(bindings) => {
                self.instantiations += 1;
                Ok(Live {
                    store,
                    bindings,
                    created: Instant::now(),
                    records: 0,
                    earlier,
                })
            }
            // The pool may be full with this store's spent instances: once
            // more in a store of its own.
            Err(error) if earlier.instances > 0 && !guest_fault(&error) => {
                self.retire(store);
                self.instantiate()
            }
            Err(error) => {
                let mut failure = classify(&error, store.data_mut(), plugin, &mut self.names);
                // A guest that traps or exits in its start function is the
                // plugin's fault; anything else (the pool is full) is the
                // host's.
                if !guest_fault(&error) {
                    failure.kind = FailureKind::InstantiateError;
                }
                self.retire(store);
                Err(failure)
            }
        }
    }
}

/// What each record's call gets: its deadline and, on a fuel-metered
/// engine, its fuel.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Arm {
    /// Epoch ticks from now.
    ticks: u64,
    fuel: Option<u64>,
}

impl Arm {
    pub(crate) fn new(limits: &Limits, engine: &EngineSettings) -> Self {
        let tick = u64::from(engine.epoch_tick_ms.max(1));
        Self {
            // +1: the current epoch period is already partly over.
            ticks: limits.timeout_ms.div_ceil(tick) + 1,
            // Unmetered pipelines on a fuel-enabled engine get all the fuel.
            fuel: engine.fuel.then(|| limits.fuel.unwrap_or(u64::MAX)),
        }
    }

    fn apply(self, mut store: impl AsContextMut) {
        let mut store = store.as_context_mut();
        store.set_epoch_deadline(self.ticks);
        if let Some(fuel) = self.fuel {
            let _ = store.set_fuel(fuel);
        }
    }
}

/// The `batch.finished` import: keeps the outcome of the call's next
/// record, then either says stop or makes the store ready for the record
/// after it (log and stdio attribution, deadline, fuel).
pub(crate) fn finished(
    store: StoreContextMut<'_, HostState>,
    (answer,): (Result<Vec<WitOutput>, WitFailure>,),
) -> wasmtime::Result<(bool,)> {
    let state = check_open(&store)?;
    let outcome = outcome(
        answer,
        state.batch.max_outputs,
        state.batch.max_output_bytes,
        state.plugin(),
    );
    report(store, outcome)
}

/// The `batch.finished-encoded` import: [`finished`] with the outputs
/// read straight from the guest's memory (layout in `wit/processor.wit`).
pub(crate) fn finished_encoded(
    store: StoreContextMut<'_, HostState>,
    (answer,): (Result<WasmList<u8>, WitFailure>,),
) -> wasmtime::Result<(bool,)> {
    let state = check_open(&store)?;
    let (max_outputs, max_bytes) = (state.batch.max_outputs, state.batch.max_output_bytes);
    let outcome = match answer {
        Ok(list) => {
            let bytes = list.as_le_slice(&store);
            let (outputs, count) =
                decode_outputs(bytes, max_outputs as usize).ok_or_else(|| {
                    wasmtime::format_err!(
                        "batch.finished-encoded: outputs not in the documented layout"
                    )
                })?;
            let plugin = store.data().plugin();
            if count > outputs.len() {
                Err(too_many_outputs(count, max_outputs, plugin).into())
            } else {
                check_outputs(outputs, max_outputs, max_bytes, plugin)
            }
        }
        Err(failure) => Err(failed(failure, store.data().plugin()).into()),
    };
    report(store, outcome)
}

/// Only a record that awaits its report may be reported: anything else
/// traps (what was reported stands, nothing else is run).
fn check_open<'a>(store: &'a StoreContextMut<'_, HostState>) -> wasmtime::Result<&'a HostState> {
    let state = store.data();
    if !state.batch.open {
        wasmtime::bail!("batch.finished called with no record of handle-batch left to report");
    }
    Ok(state)
}

/// Keeps a `handle-batch` record's outcome; says whether to go on, and if
/// so readies the store for the next record.
fn report(
    mut store: StoreContextMut<'_, HostState>,
    outcome: Outcome,
) -> wasmtime::Result<(bool,)> {
    let state = store.data_mut();
    state.warn_suppressed_logs();
    let retry = matches!(&outcome, Err(f) if f.kind == FailureKind::Retry);
    let call = &mut state.batch;
    let ended = Instant::now();
    call.outcomes.push((outcome, ended));
    let next = call.outcomes.len();
    if retry || next == call.records.len() || ended >= call.until || cancelled(call, ended) {
        call.open = false;
        return Ok((false,));
    }
    let arm = call.arm;
    state.begin_batch_record(next);
    arm.apply(&mut store);
    Ok((true,))
}

/// How often a `handle-batch` call looks at its cancel token, at most:
/// looking takes a lock (tokio-util's token), which at one look per
/// record was 6% of a plugin thread's time per 100-byte record. A revoke
/// or shutdown then waits at most this much longer than the record being
/// handled.
const CANCEL_CHECK: Duration = Duration::from_micros(100);

/// Whether the call's token is cancelled: looked at after its first
/// record, and then at most every [`CANCEL_CHECK`].
fn cancelled(call: &mut BatchCall, now: Instant) -> bool {
    if call
        .cancel_checked
        .is_some_and(|at| now.saturating_duration_since(at) < CANCEL_CHECK)
    {
        return false;
    }
    call.cancel_checked = Some(now);
    call.cancel.is_cancelled()
}

/// The outputs in `bytes` (the `finished-encoded` layout), owned, and how
/// many there are; past `keep` of them only counted, so that a guest's
/// flood of tiny outputs costs the host no memory. `None` if `bytes` is
/// not in the layout.
fn decode_outputs(bytes: &[u8], keep: usize) -> Option<(Vec<Output>, usize)> {
    let mut reader = sandpiper_wire::Reader::new(bytes);
    let mut outputs = Vec::new();
    let mut count = 0;
    while !reader.is_empty() {
        let output = reader.output()?;
        if count < keep {
            // Not `collect`: a call per output, measured, for what is
            // mostly no headers at all.
            let mut headers = Vec::with_capacity(output.headers.len());
            headers.extend(
                (output.headers.iter()).map(|(name, value)| (name.to_owned(), value.to_vec())),
            );
            outputs.push(Output {
                topic: output.topic.map(str::to_owned),
                key: output.key.map(<[u8]>::to_vec),
                value: output.value.map(<[u8]>::to_vec),
                headers,
            });
        }
        count += 1;
    }
    Some((outputs, count))
}

/// Appends `record` to `out` in the `handle-batch` layout
/// (`wit/processor.wit`, world `batch-processor`).
fn encode(record: &Record, out: &mut Vec<u8>) {
    let origin = sandpiper_wire::Origin {
        topic: &record.topic,
        partition: record.partition,
        offset: record.offset,
        timestamp: record.timestamp,
    };
    sandpiper_wire::write_record(
        out,
        origin,
        record.key.as_deref(),
        record.value.as_deref(),
        record
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice())),
    );
}

/// A record's outcome from the plugin's answer.
fn outcome(
    answer: Result<Vec<WitOutput>, WitFailure>,
    max_outputs: u32,
    max_bytes: u64,
    plugin: &PluginId,
) -> Outcome {
    match answer {
        Ok(outputs) => check_outputs(
            outputs.into_iter().map(Output::from).collect(),
            max_outputs,
            max_bytes,
            plugin,
        ),
        Err(failure) => Err(failed(failure, plugin).into()),
    }
}

/// A failure the plugin reported on purpose.
fn failed(failure: WitFailure, plugin: &PluginId) -> Failure {
    match failure {
        WitFailure::Retry(msg) => Failure::new(FailureKind::Retry, msg, plugin.clone()),
        WitFailure::Reject(msg) => Failure::new(FailureKind::Rejected, msg, plugin.clone()),
    }
}

fn check_outputs(
    outputs: Vec<Output>,
    max_outputs: u32,
    max_bytes: u64,
    plugin: &PluginId,
) -> Outcome {
    if outputs.len() > max_outputs as usize {
        return Err(too_many_outputs(outputs.len(), max_outputs, plugin).into());
    }
    let bytes: u64 = outputs.iter().map(|o| o.size() as u64).sum();
    if bytes > max_bytes {
        let failure = Failure::new(
            FailureKind::OutputLimit,
            format!("{bytes} output bytes, more than the {max_bytes} allowed per record"),
            plugin.clone(),
        );
        return Err(failure.into());
    }
    Ok(outputs)
}

fn too_many_outputs(count: usize, max_outputs: u32, plugin: &PluginId) -> Failure {
    Failure::new(
        FailureKind::OutputLimit,
        format!("{count} outputs, more than the {max_outputs} allowed per record"),
        plugin.clone(),
    )
}

impl From<WitOutput> for Output {
    fn from(o: WitOutput) -> Self {
        Self {
            topic: o.topic,
            key: o.key,
            value: o.value,
            headers: o.headers,
        }
    }
}

/// Whether the guest ended the call (a trap or an exit), rather than the host
/// failing it.
fn guest_fault(error: &wasmtime::Error) -> bool {
    error.downcast_ref::<Trap>().is_some()
        || error.downcast_ref::<wasmtime_wasi::I32Exit>().is_some()
}

/// Turns a wasmtime error from a call into a typed failure.
fn classify(
    error: &wasmtime::Error,
    state: &mut HostState,
    plugin: &Plugin,
    names: &mut FrameNames,
) -> Failure {
    let trap = error.downcast_ref::<Trap>().copied();
    let stderr = state.stdio.take();
    let backtrace = error
        .downcast_ref::<WasmBacktrace>()
        .map(|backtrace| guest_frames(backtrace, names))
        .unwrap_or_default();
    // A Rust guest whose allocation fails prints this and aborts.
    let oom_in_stderr = stderr.contains("memory allocation of") && stderr.contains("failed");
    let kind = match trap {
        Some(Trap::Interrupt) => FailureKind::Timeout,
        Some(Trap::OutOfFuel) => FailureKind::OutOfFuel,
        _ if state.limiter.denied || oom_in_stderr => FailureKind::OutOfMemory,
        _ => FailureKind::Trap,
    };
    // A guest that exits (WASI `exit`) while handling a record: the SDK's
    // panic hook does, after printing the panic, so that a panic ends the
    // call through the host rather than a trap instruction (whose signal
    // costs several microseconds more, BENCHMARKS.md).
    let exit = error
        .downcast_ref::<wasmtime_wasi::I32Exit>()
        .map(|exit| exit.0);
    // A Rust panic's report, when the guest exited or aborted after one.
    let panic = match (trap, exit) {
        (Some(Trap::UnreachableCodeReached), _) | (None, Some(_)) => panic_message(&stderr),
        _ => None,
    };
    // What the guest did, where that says more than the trap: a Rust panic
    // (its report) or an exit.
    let named = match (kind, panic, exit) {
        (FailureKind::Timeout | FailureKind::OutOfMemory, ..) => None,
        (_, Some(report), _) => Some(("panic", report)),
        (_, None, Some(status)) => Some((
            "exit",
            format!("the plugin exited (status {status}) instead of returning"),
        )),
        (_, None, None) => None,
    };
    let (code, message) = match named {
        Some((code, message)) => (Some(code.to_owned()), message),
        None => (
            trap.map(trap_code),
            match kind {
                FailureKind::Timeout => format!(
                    "deadline of {} ms exceeded",
                    plugin.settings.limits.timeout_ms
                ),
                FailureKind::OutOfMemory => format!(
                    "memory cap of {} MiB reached ({})",
                    plugin.settings.limits.memory_mb,
                    root_message(error)
                ),
                _ => root_message(error),
            },
        ),
    };
    Failure {
        kind,
        message,
        trap: code,
        backtrace,
        stderr,
        plugin: plugin.id.clone(),
    }
}

/// A trap's guest frames, innermost first, as `module!function` with Rust
/// names demangled. After a Rust panic they start at the frame that
/// panicked (`core::option::unwrap_failed`, say, then the plugin's own
/// code): the panic runtime's frames, the SDK's hook and its exit below it
/// say nothing about the plugin and were most of a dead letter's bytes.
fn guest_frames(backtrace: &WasmBacktrace, names: &mut FrameNames) -> Vec<String> {
    let frames = backtrace.frames();
    let start = frames
        .iter()
        .rposition(|frame| frame.func_name().is_some_and(|raw| names.get(raw).1))
        .map_or(0, |last| last + 1);
    // A panic raised in the outermost frame: keep everything.
    let start = if start == frames.len() { 0 } else { start };
    frames[start..]
        .iter()
        .map(|frame| {
            let func = match frame.func_name() {
                Some(raw) => names.get(raw).0,
                None => return format!("<wasm function {}>", frame.func_index()),
            };
            match frame.module().name() {
                Some(module) => format!("{module}!{func}"),
                None => func.to_owned(),
            }
        })
        .collect()
}

/// Guest function names demangled, and whether each is part of the panic
/// runtime, by raw name: a plugin's traps repeat the same frames, and
/// demangling them all anew cost about 1.5 µs per trap.
#[derive(Debug, Default)]
struct FrameNames(HashMap<String, (String, bool)>);

impl FrameNames {
    /// Names a plugin's traps can show are bounded by its functions; this
    /// bounds what a huge module's could cost.
    const MAX: usize = 4096;

    fn get(&mut self, raw: &str) -> (&str, bool) {
        if !self.0.contains_key(raw) {
            if self.0.len() >= Self::MAX {
                self.0.clear();
            }
            let demangled = match rustc_demangle::try_demangle(raw) {
                // `#`: without the hash or crate disambiguator.
                Ok(demangled) => format!("{demangled:#}"),
                Err(_) => raw.to_owned(),
            };
            let panic = is_panic_runtime(&demangled);
            self.0.insert(raw.to_owned(), (demangled, panic));
        }
        let (name, panic) = &self.0[raw];
        (name, *panic)
    }
}

/// Frames of Rust's panic machinery (demangled names), from `panic!` or a
/// failed `unwrap` down to the panic hook.
fn is_panic_runtime(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "core::panicking::",
        "std::panicking::",
        "std::sys::backtrace::__rust_end_short_backtrace",
        "std::rt::begin_panic",
        "__rustc::rust_begin_unwind",
        "rust_begin_unwind",
    ];
    PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// The Rust panic hook's report at the end of a guest's stderr, from the
/// last `panicked at` on, on one line with its location (`panicked at
/// src/lib.rs:12:5: message`), without std's hint about `RUST_BACKTRACE`.
fn panic_message(stderr: &str) -> Option<String> {
    let report = &stderr[stderr.rfind("panicked at ")?..];
    let report = report
        .split_once("\nnote: run with `RUST_BACKTRACE")
        .map_or(report, |(report, _)| report);
    Some(report.trim_end().replacen(":\n", ": ", 1))
}

fn root_message(error: &wasmtime::Error) -> String {
    match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{error:#}"),
    }
}

/// Stable kebab-case names for trap codes.
pub(crate) fn trap_code(trap: Trap) -> String {
    match trap {
        Trap::StackOverflow => "stack-overflow".into(),
        Trap::MemoryOutOfBounds => "memory-out-of-bounds".into(),
        Trap::HeapMisaligned => "heap-misaligned".into(),
        Trap::TableOutOfBounds => "table-out-of-bounds".into(),
        Trap::IndirectCallToNull => "indirect-call-to-null".into(),
        Trap::BadSignature => "bad-signature".into(),
        Trap::IntegerOverflow => "integer-overflow".into(),
        Trap::IntegerDivisionByZero => "integer-division-by-zero".into(),
        Trap::BadConversionToInteger => "bad-conversion-to-integer".into(),
        Trap::UnreachableCodeReached => "unreachable".into(),
        Trap::Interrupt => "interrupt".into(),
        Trap::OutOfFuel => "out-of-fuel".into(),
        other => {
            // Newer codes: derive kebab-case from the Debug name.
            let mut out = String::new();
            for (i, c) in format!("{other:?}").chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    out.push('-');
                }
                out.push(c.to_ascii_lowercase());
            }
            out
        }
    }
}
