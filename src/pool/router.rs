//! The router thread (`zen-ws-pool-router`), one per pool: it merges the
//! clients' events into the pool's channel, keeps the health table current
//! and supervises (restarts) the clients.
//!
//! It sleeps in one crossbeam `Select` over its control channel, every live
//! client's event receiver and (while events wait for room) the merged
//! channel's send side, with a timeout to the next health refresh or
//! scheduled restart. See the [pool documentation](super) for why there is no
//! thread per client and how back-pressure works.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{
    Receiver, RecvTimeoutError, Select, SendError, Sender, TryRecvError, TrySendError,
};

use super::health::{self, HealthInputs, RttWindow};
use super::supervision::{Decision, Restarts};
use super::table::{Slot, Snapshot};
use super::{ClientId, Inner, PoolEvent, Supervision};
use crate::client::{Client, CloseInitiator, ConnectionState, Event};
use crate::config::EventPolicy;
use crate::connection::backoff::Backoff;
use crate::error::Error;

/// Events forwarded from one receiver per wake-up before the others get a turn.
const BURST: usize = 256;
/// How long the router waits for the last event of a client that is closed.
const LAST_EVENT_GRACE: Duration = Duration::from_millis(100);

/// What the pool handle and the restart threads tell the router.
pub(crate) enum Control {
    /// `Pool::add` connected a client and put it in the table.
    Add { slot: Arc<Slot>, client: Client },
    /// `Pool::remove` took this client out of the table and is closing it.
    Removing(ClientId),
    /// A restart thread finished.
    RestartDone {
        id: ClientId,
        attempt: u32,
        outcome: Outcome,
    },
    /// `Pool::shutdown` emptied the table and closed every client.
    Shutdown,
}

/// How a restart attempt ended.
pub(crate) enum Outcome {
    /// Connected, and put into its row of the table.
    Installed(Client),
    /// The connect failed.
    Failed(Error),
    /// Connected, but the row was gone (removed, or shutting down); the
    /// restart thread closed the client itself.
    Cancelled,
}

/// Where a client is in its life.
enum Phase {
    /// Its connection object exists (connected or reconnecting by itself).
    Up,
    /// Down; the next restart attempt starts at `until`.
    Waiting { until: Instant, attempt: u32 },
    /// A restart thread is connecting.
    Connecting {
        thread: Option<JoinHandle<()>>,
        attempt: u32,
    },
    /// Supervision gave up.
    Failed,
}

/// The router's own record of one client.
struct Member {
    slot: Arc<Slot>,
    /// The router's handle on the current incarnation.
    client: Option<Client>,
    /// Its event receiver; `None` once retired.
    events: Option<Receiver<Event>>,
    phase: Phase,
    /// `Pool::remove` was called: no restarts; [`PoolEvent::Removed`] once
    /// its events are drained.
    removing: bool,
    /// Removed; dropped at the top of the next loop (indices stay valid
    /// until then).
    gone: bool,
    restarts: Restarts,
    rtt: RttWindow,
    /// The client's `pongs_received` at the last refresh: a new pong means
    /// `last_rtt` is a new sample.
    pongs_seen: u64,
    /// The cause of the last disconnect, for a `Closed` that follows it.
    last_cause: Option<Arc<Error>>,
    restarted: u32,
}

impl Member {
    fn new(slot: Arc<Slot>, client: Option<Client>, inner: &Inner) -> Member {
        let s = &inner.settings;
        let events = client.as_ref().map(Client::events);
        Member {
            slot,
            events,
            phase: if client.is_some() {
                Phase::Up
            } else {
                Phase::Failed
            },
            client,
            removing: false,
            gone: false,
            restarts: Restarts::new(
                s.max_restarts,
                s.restart_window,
                Backoff::new(s.restart_delay, s.max_restart_delay),
            ),
            rtt: RttWindow::new(),
            pongs_seen: 0,
            last_cause: None,
            restarted: 0,
        }
    }

    fn id(&self) -> ClientId {
        self.slot.id
    }

    fn debug(&self, what: std::fmt::Arguments<'_>) {
        if self.slot.config.debug {
            log::debug!(target: "zen_websocket", "pool client {}: {what}", self.slot.id);
        }
    }
}

/// What woke the router.
enum Woke {
    Timeout,
    Control(Control),
    ControlGone,
    /// An event (or the end of the channel) from `members[i]`.
    Event(usize, Result<Event, crossbeam_channel::RecvError>),
    /// A waiting event went out.
    Sent,
}

/// The router thread's state.
pub(crate) struct Router {
    inner: Arc<Inner>,
    control: Receiver<Control>,
    out: Sender<(ClientId, PoolEvent)>,
    /// Events waiting for room in `out`, in order.
    outbox: VecDeque<(ClientId, PoolEvent)>,
    members: Vec<Member>,
    /// Clients that failed to connect at start: down from the beginning.
    initial_failures: Vec<(ClientId, Error)>,
    next_refresh: Instant,
    /// The members whose receivers the current `Select` watches, in order.
    watched: Vec<usize>,
}

impl Router {
    pub(crate) fn new(
        inner: Arc<Inner>,
        control: Receiver<Control>,
        out: Sender<(ClientId, PoolEvent)>,
        clients: Vec<(Arc<Slot>, crate::Result<Client>)>,
    ) -> Router {
        let mut members = Vec::with_capacity(clients.len());
        let mut initial_failures = Vec::new();
        for (slot, result) in clients {
            match result {
                Ok(client) => members.push(Member::new(slot, Some(client), &inner)),
                Err(e) => {
                    initial_failures.push((slot.id, e));
                    members.push(Member::new(slot, None, &inner));
                }
            }
        }
        Router {
            inner,
            control,
            out,
            outbox: VecDeque::new(),
            members,
            initial_failures,
            next_refresh: Instant::now(),
            watched: Vec::new(),
        }
    }

    /// The thread's main loop.
    pub(crate) fn run(mut self) {
        for (id, e) in std::mem::take(&mut self.initial_failures) {
            if let Some(i) = self.index_of(id) {
                let e = Arc::new(e);
                self.members[i].slot.record_error();
                self.down(i, e);
            }
        }
        loop {
            self.members.retain(|m| !m.gone);
            // Control first: a removal or a shutdown must be known before the
            // events its close produces are taken for an outage.
            loop {
                match self.control.try_recv() {
                    Ok(Control::Shutdown) => return self.finish(),
                    Ok(c) => self.on_control(c),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return self.finish(),
                }
            }
            self.members.retain(|m| !m.gone);
            let now = Instant::now();
            if now >= self.next_refresh {
                self.refresh_all();
                self.next_refresh = now + self.inner.settings.health_interval;
            }
            self.start_due_restarts(now);
            let deadline = self.next_deadline();
            match self.wait(deadline) {
                Woke::Timeout | Woke::Sent => {}
                Woke::Control(Control::Shutdown) | Woke::ControlGone => return self.finish(),
                Woke::Control(c) => self.on_control(c),
                Woke::Event(i, Ok(ev)) => {
                    self.on_event(i, ev);
                    self.burst(i);
                }
                Woke::Event(i, Err(_)) => self.on_disconnected(i),
            }
        }
    }

    fn index_of(&self, id: ClientId) -> Option<usize> {
        self.members.iter().position(|m| m.id() == id && !m.gone)
    }

    /// The next refresh or scheduled restart, whichever comes first.
    fn next_deadline(&self) -> Instant {
        self.members
            .iter()
            .filter_map(|m| match m.phase {
                Phase::Waiting { until, .. } if !m.removing => Some(until),
                _ => None,
            })
            .fold(self.next_refresh, Instant::min)
    }

    /// Sleep until a control message, an event, room for a waiting event, or
    /// `deadline`.
    fn wait(&mut self, deadline: Instant) -> Woke {
        let mut front = self.outbox.pop_front();
        // Under Block, a waiting event stops the reading of the clients: their
        // channels fill and TCP pushes back. DropNewest never stops reading.
        let watch_clients =
            front.is_none() || self.inner.settings.event_policy == EventPolicy::DropNewest;
        self.watched.clear();
        let woke = {
            let mut sel = Select::new();
            let ctl = sel.recv(&self.control);
            let send = front.as_ref().map(|_| sel.send(&self.out));
            let base = if send.is_some() { 2 } else { 1 };
            if watch_clients {
                for (i, m) in self.members.iter().enumerate() {
                    if let Some(rx) = &m.events {
                        sel.recv(rx);
                        self.watched.push(i);
                    }
                }
            }
            match sel.select_deadline(deadline) {
                Err(_) => Woke::Timeout,
                Ok(op) if op.index() == ctl => match op.recv(&self.control) {
                    Ok(c) => Woke::Control(c),
                    Err(_) => Woke::ControlGone,
                },
                Ok(op) if Some(op.index()) == send => match front.take() {
                    Some(item) => match op.send(&self.out, item) {
                        Ok(()) => Woke::Sent,
                        // The pool handle holds a receiver until it is gone,
                        // so nobody can read this event anymore.
                        Err(SendError(_)) => Woke::Sent,
                    },
                    // Unreachable: the send is only registered with an item.
                    None => Woke::Timeout,
                },
                Ok(op) => {
                    let i = self.watched[op.index() - base];
                    match &self.members[i].events {
                        Some(rx) => Woke::Event(i, op.recv(rx)),
                        // Unreachable: `watched` lists members with a receiver.
                        None => Woke::Timeout,
                    }
                }
            }
        };
        if let Some(item) = front {
            self.outbox.push_front(item);
        }
        woke
    }

    /// Forward more of what `members[i]` has, up to [`BURST`] per wake-up.
    fn burst(&mut self, i: usize) {
        let Some(rx) = self.members[i].events.clone() else {
            return;
        };
        for _ in 1..BURST {
            let m = &self.members[i];
            if m.gone || m.events.is_none() {
                return;
            }
            if !self.outbox.is_empty() && self.inner.settings.event_policy == EventPolicy::Block {
                return;
            }
            match rx.try_recv() {
                Ok(ev) => self.on_event(i, ev),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => return self.on_disconnected(i),
            }
        }
    }

    /// Put an event on the merged channel, or in the outbox when it is full.
    fn forward(&mut self, id: ClientId, ev: PoolEvent) {
        let droppable = self.inner.settings.event_policy == EventPolicy::DropNewest
            && matches!(ev, PoolEvent::Client(Event::Message(_)));
        if !self.outbox.is_empty() {
            if droppable {
                self.count_drop();
            } else {
                self.outbox.push_back((id, ev));
            }
            return;
        }
        match self.out.try_send((id, ev)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) if droppable => self.count_drop(),
            Err(TrySendError::Full(item)) => self.outbox.push_back(item),
        }
    }

    fn count_drop(&self) {
        self.inner
            .counters
            .dropped_events
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Act on one client event, then forward it.
    fn on_event(&mut self, i: usize, ev: Event) {
        let m = &mut self.members[i];
        let id = m.id();
        let mut down = None;
        let mut refresh = false;
        match &ev {
            Event::Connected { .. } => refresh = true,
            Event::Reconnected { .. } => {
                m.last_cause = None;
                refresh = true;
            }
            Event::Disconnected { cause } => {
                m.slot.record_error();
                m.last_cause = Some(cause.clone());
                refresh = true;
            }
            Event::ReconnectFailed { .. } => m.slot.record_error(),
            Event::GaveUp { last_error, .. } => down = Some(last_error.clone()),
            Event::Closed {
                code,
                reason,
                initiator,
            } => {
                down = Some(match initiator {
                    // Not asked by the pool (unless it is a removal, which
                    // `down` recognises): someone closed a client of
                    // `Pool::clients` by hand.
                    CloseInitiator::User => Arc::new(Error::Closed),
                    CloseInitiator::Peer => {
                        // 1006 follows a `Disconnected` that was counted already.
                        if *code != 1006 {
                            m.slot.record_error();
                        }
                        m.last_cause.take().unwrap_or_else(|| {
                            Arc::new(Error::PeerClosed {
                                code: *code,
                                reason: reason.clone(),
                            })
                        })
                    }
                });
            }
            _ => {}
        }
        // The client's own event first, then what the pool makes of it.
        self.forward(id, PoolEvent::Client(ev));
        if let Some(cause) = down {
            self.down(i, cause);
        } else if refresh {
            self.refresh(i);
        }
    }

    /// The event channel of `members[i]` ended.
    fn on_disconnected(&mut self, i: usize) {
        self.members[i].events = None;
        if self.members[i].removing {
            self.removed_if_done(i);
        } else if matches!(self.members[i].phase, Phase::Up) {
            // The connection thread ended without a terminal event: only a
            // close from elsewhere does that (its last event could not wait
            // for room in a full channel).
            self.down(i, Arc::new(Error::Closed));
        }
    }

    /// The client of `members[i]` is down: retire its incarnation, then
    /// restart it or give up.
    fn down(&mut self, i: usize, cause: Arc<Error>) {
        let id = self.members[i].id();
        let old_events = self.members[i].events.take();
        let old_client = self.members[i].client.take();
        let in_table = self.vacate(id);
        if !in_table {
            // Removed (or shutting down): whoever took the row closes the client.
            self.members[i].removing = true;
            drop(old_client);
        } else if let Some(client) = old_client {
            // Its thread has ended (or ends within one event wait), so this
            // close returns at once; it joins the thread.
            let _ = client.close();
        }
        // Whatever the old incarnation still had, in order, before the pool's
        // own event about it.
        if let Some(rx) = old_events {
            for ev in rx.try_iter() {
                self.forward(id, PoolEvent::Client(ev));
            }
        }
        if self.members[i].removing {
            self.members[i].phase = Phase::Failed;
            return self.removed_if_done(i);
        }
        let now = Instant::now();
        let m = &mut self.members[i];
        match m.restarts.on_down(now, &cause) {
            Decision::Restart { attempt, delay } => {
                m.debug(format_args!(
                    "down ({cause}); restart attempt {attempt} in {delay:?}"
                ));
                m.phase = Phase::Waiting {
                    until: now + delay,
                    attempt,
                };
                self.forward(
                    id,
                    PoolEvent::Restarting {
                        attempt,
                        delay,
                        cause,
                    },
                );
            }
            Decision::GiveUp { reason } => {
                log::warn!(target: "zen_websocket", "pool client {id} failed: {reason}");
                m.phase = Phase::Failed;
                self.forward(id, PoolEvent::Failed { reason });
            }
        }
        self.refresh(i);
    }

    /// Empty the row of `id` (routing stops picking it); false if it has no row.
    fn vacate(&self, id: ClientId) -> bool {
        let mut table = self.inner.table.write();
        match table.entries.iter_mut().find(|e| e.slot.id == id) {
            Some(entry) => {
                entry.client = None;
                entry.slot.score.store(0, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// A removed member whose events are all forwarded (and whose restart
    /// thread, if any, reported) gets its last event and goes.
    fn removed_if_done(&mut self, i: usize) {
        let m = &self.members[i];
        if m.gone
            || !m.removing
            || m.events.is_some()
            || matches!(m.phase, Phase::Connecting { .. })
        {
            return;
        }
        let id = m.id();
        self.members[i].gone = true;
        self.members[i].client = None;
        // At shutdown every row goes at once and the channel ends: that is
        // not a removal to report.
        if self.inner.table.read().open {
            self.members[i].debug(format_args!("removed"));
            self.forward(id, PoolEvent::Removed);
        }
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::Add { slot, client } => {
                let member = Member::new(slot, Some(client), &self.inner);
                self.members.push(member);
                self.refresh(self.members.len() - 1);
            }
            Control::Removing(id) => {
                if let Some(i) = self.index_of(id) {
                    self.members[i].removing = true;
                    if matches!(self.members[i].phase, Phase::Waiting { .. }) {
                        self.members[i].phase = Phase::Failed;
                    }
                    self.removed_if_done(i);
                }
            }
            Control::RestartDone {
                id,
                attempt,
                outcome,
            } => self.on_restart_done(id, attempt, outcome),
            // Handled by the loop.
            Control::Shutdown => {}
        }
    }

    fn on_restart_done(&mut self, id: ClientId, attempt: u32, outcome: Outcome) {
        let Some(i) = self.index_of(id) else {
            // Unreachable: a member waits for its restart thread before it goes.
            if let Outcome::Installed(client) = outcome {
                let _ = client.close();
            }
            return;
        };
        if let Phase::Connecting { thread, .. } = &mut self.members[i].phase {
            // The thread sent this as its last act.
            if let Some(t) = thread.take() {
                if t.join().is_err() {
                    log::error!(target: "zen_websocket", "pool client {id}: restart thread panicked");
                }
            }
        }
        match outcome {
            Outcome::Installed(client) => {
                let m = &mut self.members[i];
                m.debug(format_args!("restarted on attempt {attempt}"));
                m.events = Some(client.events());
                m.client = Some(client);
                m.phase = Phase::Up;
                m.rtt.clear();
                m.pongs_seen = 0;
                m.last_cause = None;
                m.restarts.on_up();
                m.restarted = m.restarted.saturating_add(1);
                self.inner.counters.restarts.fetch_add(1, Ordering::Relaxed);
                self.forward(id, PoolEvent::Restarted { attempt });
                self.refresh(i);
            }
            Outcome::Failed(e) => {
                self.members[i].phase = Phase::Failed;
                if self.members[i].removing {
                    return self.removed_if_done(i);
                }
                let e = Arc::new(e);
                self.members[i].slot.record_error();
                self.members[i].debug(format_args!("restart attempt {attempt} failed: {e}"));
                self.forward(
                    id,
                    PoolEvent::RestartFailed {
                        attempt,
                        error: e.clone(),
                    },
                );
                self.down(i, e);
            }
            Outcome::Cancelled => {
                self.members[i].phase = Phase::Failed;
                self.members[i].removing = true;
                self.removed_if_done(i);
            }
        }
    }

    /// Start the restarts whose backoff delay is over.
    fn start_due_restarts(&mut self, now: Instant) {
        for i in 0..self.members.len() {
            let m = &self.members[i];
            let attempt = match m.phase {
                Phase::Waiting { until, attempt } if until <= now && !m.removing => attempt,
                _ => continue,
            };
            let id = m.id();
            let config = m.slot.config.clone();
            let inner = self.inner.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("zen-ws-pool-restart-{id}"))
                .spawn(move || {
                    let outcome = match Client::connect(config) {
                        Ok(client) => {
                            if inner.install(id, &client) {
                                Outcome::Installed(client)
                            } else {
                                let _ = client.close();
                                Outcome::Cancelled
                            }
                        }
                        Err(e) => Outcome::Failed(e),
                    };
                    // The router waits for this before it ends, so the
                    // receiver is there.
                    let _ = inner.control.send(Control::RestartDone {
                        id,
                        attempt,
                        outcome,
                    });
                });
            match spawned {
                Ok(thread) => {
                    self.members[i].phase = Phase::Connecting {
                        thread: Some(thread),
                        attempt,
                    };
                    self.refresh(i);
                }
                Err(e) => {
                    self.members[i].phase = Phase::Connecting {
                        thread: None,
                        attempt,
                    };
                    let e = Error::io("spawning a pool restart thread", e);
                    self.on_restart_done(id, attempt, Outcome::Failed(e));
                }
            }
        }
    }

    /// Refresh every score; notice a client that ended while its events
    /// wait unread (the consumer is slow), so supervision does not wait for it.
    fn refresh_all(&mut self) {
        for i in 0..self.members.len() {
            let state = self.refresh(i);
            let m = &self.members[i];
            if state == ConnectionState::Closed
                && matches!(m.phase, Phase::Up)
                && !m.removing
                && !m.gone
                && m.events.is_some()
            {
                self.retire_ended(i);
            }
        }
    }

    /// `members[i]` is closed but its terminal event was not read yet (the
    /// router stopped reading it while the merged channel was full). Read on
    /// until that event retires it: the connection thread may be waiting for
    /// room for it right now, and it says why the client ended.
    fn retire_ended(&mut self, i: usize) {
        let Some(rx) = self.members[i].events.clone() else {
            return;
        };
        loop {
            if self.members[i].gone || self.members[i].events.is_none() {
                // A terminal event retired it.
                return;
            }
            match rx.recv_timeout(LAST_EVENT_GRACE) {
                Ok(ev) => self.on_event(i, ev),
                Err(RecvTimeoutError::Disconnected) => return self.on_disconnected(i),
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        // Closed, yet silent: treat it as down; `down` closes it, which ends
        // its thread.
        let cause = self.members[i]
            .last_cause
            .take()
            .unwrap_or_else(|| Arc::new(Error::NotConnected));
        self.down(i, cause);
    }

    /// Recompute the score and view of `members[i]`; returns its state.
    fn refresh(&mut self, i: usize) -> ConnectionState {
        let now = Instant::now();
        let m = &mut self.members[i];
        let recent_errors = m.slot.errors.lock().value(now);
        let mut inputs = HealthInputs {
            state: ConnectionState::Closed,
            pending: 0,
            rtt: None,
            rtt_p99: None,
            recent_errors,
        };
        let supervision = match (&m.phase, &m.client) {
            (Phase::Up, Some(client)) => {
                let stats = client.stats();
                if stats.pongs_received > m.pongs_seen {
                    m.pongs_seen = stats.pongs_received;
                    if let Some(rtt) = stats.last_rtt {
                        m.rtt.push(rtt);
                    }
                }
                inputs.state = stats.state;
                inputs.pending = stats.pending_requests;
                inputs.rtt = stats.smoothed_rtt;
                inputs.rtt_p99 = m.rtt.p99();
                Supervision::Running
            }
            (Phase::Up, None) => Supervision::Running,
            (Phase::Waiting { attempt, .. }, _) | (Phase::Connecting { attempt, .. }, _) => {
                inputs.state = ConnectionState::Reconnecting;
                Supervision::Restarting { attempt: *attempt }
            }
            (Phase::Failed, _) => Supervision::Failed,
        };
        let score = health::score(&inputs);
        *m.slot.view.lock() = Snapshot {
            state: inputs.state,
            supervision,
            score,
            pending: inputs.pending,
            rtt: inputs.rtt,
            rtt_p99: inputs.rtt_p99,
            recent_errors,
            restarts: m.restarted,
        };
        m.slot.score.store(score, Ordering::Release);
        inputs.state
    }

    /// Shutdown: `Pool::shutdown` emptied the table and closed every client.
    fn finish(mut self) {
        // Restarts in flight find their row gone, close what they connected
        // and report: wait for them, so that no thread outlives the pool.
        for m in &mut self.members {
            if let Phase::Connecting { thread, .. } = &mut m.phase {
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
        }
        while let Ok(c) = self.control.try_recv() {
            if let Control::RestartDone {
                outcome: Outcome::Installed(client),
                ..
            } = c
            {
                // Unreachable (the table is closed), but never leave one open.
                let _ = client.close();
            }
        }
        // Best effort, never blocking: the last events of the closed clients.
        let mut full = false;
        let mut pending: Vec<(ClientId, PoolEvent)> = self.outbox.drain(..).collect();
        for m in &mut self.members {
            if let Some(rx) = m.events.take() {
                let id = m.slot.id;
                pending.extend(rx.try_iter().map(|ev| (id, PoolEvent::Client(ev))));
            }
            // Dropping the router's handles: the clients are closed already.
            m.client = None;
        }
        for item in pending {
            if full || self.out.try_send(item).is_err() {
                full = true;
            }
        }
        // `out` drops here: the merged channel ends after its last event.
    }
}
