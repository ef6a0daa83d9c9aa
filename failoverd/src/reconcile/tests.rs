//! The writer's tests: unprivileged, over `FakeDatapath`, timed ones in paused tokio time.

use super::*;
use crate::datapath::{
    CounterTotals, FakeDatapath, FakeHandle, FakeWrite, Protocol, TableBackend, Terminated,
};

fn vip(n: u8) -> Vip {
    Vip {
        addr: format!("127.1.0.{n}:80").parse().unwrap(),
        protocol: Protocol::Tcp,
    }
}

/// The command that makes `v`'s table [`table`]`(v, port)`.
fn apply(v: Vip, port: u16) -> WriterCommand {
    WriterCommand::Apply(Arc::new(table(v, port)))
}

fn table(v: Vip, port: u16) -> VipTable {
    let b = TableBackend {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        id: u32::from(port),
    };
    VipTable::weighted(v, 1, vec![b], &[1]).unwrap()
}

fn writes(w: &Writer<FakeDatapath>) -> Vec<FakeWrite> {
    w.datapath.writes.clone()
}

fn counted(connects: u64) -> CounterTotals {
    CounterTotals {
        connects,
        ..Default::default()
    }
}

/// A running writer task over a fake, with the handles a test needs.
struct Running {
    tx: mpsc::Sender<WriterMessage>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Writer<FakeDatapath>>,
    kernel: FakeHandle,
    view: KernelView,
}

impl Running {
    fn start(dp: FakeDatapath) -> Running {
        let kernel = dp.handle();
        let writer = Writer::new(dp).unwrap();
        let view = writer.view();
        let (tx, rx) = mpsc::channel(8);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_writer(writer, rx, stop_rx));
        Running {
            tx,
            stop,
            task,
            kernel,
            view,
        }
    }

    async fn send(&self, command: WriterCommand) {
        self.tx.send(command.into()).await.unwrap();
    }

    /// Whether nothing is left to retry once everything sent is written.
    async fn barrier(&self) -> bool {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx.send(WriterMessage::Barrier(reply)).await.unwrap();
        answer.await.unwrap()
    }

    async fn stop(self) -> Writer<FakeDatapath> {
        self.stop.send(true).unwrap();
        self.task.await.unwrap()
    }
}

#[test]
fn writes_only_what_changed() {
    let mut w = Writer::new(FakeDatapath::new()).unwrap();
    w.queue(apply(vip(1), 1));
    w.queue(apply(vip(2), 2));
    assert!(!w.flush());
    w.queue(apply(vip(1), 1));
    w.queue(apply(vip(2), 3));
    w.flush();
    assert_eq!(w.writes(), 3);
    assert_eq!(writes(&w).last(), Some(&FakeWrite::Apply(table(vip(2), 3))));
}

#[test]
fn adopts_pinned_tables_and_does_not_rewrite_them() {
    let mut dp = FakeDatapath::new();
    dp.apply(&table(vip(1), 1)).unwrap();
    dp.writes.clear();
    let mut w = Writer::new(dp).unwrap();
    w.queue(apply(vip(1), 1));
    w.flush();
    assert_eq!(w.writes(), 0);
    assert!(writes(&w).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_is_kept_and_retried_after_its_backoff() {
    let mut dp = FakeDatapath::new();
    dp.fail_next_write = Some("map full".into());
    let mut w = Writer::new(dp).unwrap();
    w.queue(apply(vip(1), 1));
    assert!(w.flush(), "the failed write must stay queued");
    assert_eq!(w.errors(), 1);
    assert!(w.flush(), "not retried before its backoff");
    assert_eq!(w.errors(), 1);
    tokio::time::advance(RETRY_AFTER).await;
    assert!(!w.flush());
    assert_eq!(
        w.written().get(&vip(1)).map(|t| &**t),
        Some(&table(vip(1), 1))
    );
}

#[test]
fn the_newest_command_for_a_vip_wins() {
    let mut w = Writer::new(FakeDatapath::new()).unwrap();
    w.queue(apply(vip(1), 1));
    w.queue(apply(vip(1), 2));
    w.flush();
    assert_eq!(writes(&w), vec![FakeWrite::Apply(table(vip(1), 2))]);
}

#[test]
fn removing_an_unknown_vip_writes_nothing() {
    let mut w = Writer::new(FakeDatapath::new()).unwrap();
    w.queue(WriterCommand::Remove(vip(9)));
    w.flush();
    assert_eq!(w.writes(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_task_retries_after_a_second_and_stops_on_shutdown() {
    let mut dp = FakeDatapath::new();
    dp.fail_next_write = Some("busy".into());
    let writer = Writer::new(dp).unwrap();
    let (tx, rx) = mpsc::channel(8);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_writer(writer, rx, stop_rx));
    tx.send(apply(vip(1), 1).into()).await.unwrap();
    tokio::time::sleep(RETRY_AFTER + Duration::from_millis(10)).await;
    stop_tx.send(true).unwrap();
    let writer = task.await.unwrap();
    assert_eq!((writer.errors(), writer.writes()), (1, 1));
}

#[test]
fn a_new_table_for_a_failing_vip_is_tried_at_once() {
    let dp = FakeDatapath::new();
    dp.handle().fail_writes(libc::ENOMEM, 1);
    let mut w = Writer::new(dp).unwrap();
    w.queue(apply(vip(1), 1));
    assert!(w.flush());
    w.queue(apply(vip(1), 2));
    assert!(
        !w.flush(),
        "a different table does not wait for the backoff"
    );
    assert_eq!(*w.written()[&vip(1)], table(vip(1), 2));
}

/// Issue 16 item 8: more VIPs than the services map holds.
#[tokio::test(start_paused = true)]
async fn a_full_map_is_retried_with_backoff_and_reported_with_its_errno() {
    let dp = FakeDatapath::new();
    dp.handle().set_max_entries(Some(1));
    let running = Running::start(dp);
    running.send(apply(vip(1), 1)).await;
    running.send(apply(vip(2), 2)).await;
    assert!(!running.barrier().await, "vip 2 cannot be written");

    let failure = running.view.failing(&vip(2)).expect("vip 2 is failing");
    assert_eq!(failure.errno, Some(libc::E2BIG));
    assert!(failure.to_string().contains("E2BIG"), "{failure}");
    assert_eq!(running.view.failing(&vip(1)), None);
    assert_eq!(running.view.failing_count(), 1);

    // Two minutes: attempts at 0, 1, 3, 7, 15, 31, 61, 91 s (1 s doubling
    // to 30 s) instead of one a second.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let attempts = running.view.failing(&vip(2)).unwrap().attempts;
    assert_eq!(attempts, 8, "attempts in two minutes");

    // Room again: the next attempt (at most 30 s away) succeeds and the
    // view clears.
    running.send(WriterCommand::Remove(vip(1))).await;
    assert!(!running.barrier().await);
    tokio::time::sleep(RETRY_MAX + Duration::from_secs(1)).await;
    assert_eq!(running.view.failing(&vip(2)), None);
    assert_eq!(running.view.failing_count(), 0);
    let writer = running.stop().await;
    assert_eq!(
        writer.written().get(&vip(2)).map(|t| &**t),
        Some(&table(vip(2), 2))
    );
    assert_eq!(writer.errors(), 8);
}

#[tokio::test(start_paused = true)]
async fn a_failing_write_shows_in_the_view_until_it_recovers() {
    let dp = FakeDatapath::new();
    dp.handle().fail_writes(libc::ENOMEM, 2);
    let running = Running::start(dp);
    running.send(apply(vip(1), 1)).await;
    assert!(!running.barrier().await);
    let failure = running.view.failing(&vip(1)).expect("failing");
    assert_eq!((failure.errno, failure.attempts), (Some(libc::ENOMEM), 1));
    assert!(failure.to_string().contains("ENOMEM"), "{failure}");

    tokio::time::sleep(RETRY_AFTER + Duration::from_millis(10)).await;
    assert_eq!(running.view.failing(&vip(1)).unwrap().attempts, 2);
    tokio::time::sleep(2 * RETRY_AFTER).await;
    assert_eq!(running.view.failing(&vip(1)), None);
    assert_eq!(running.kernel.tables()[&vip(1)].table, table(vip(1), 1));
    running.stop().await;
}

/// Issue 16 item 10: an entry deleted behind the daemon's back.
#[tokio::test(start_paused = true)]
async fn an_entry_deleted_behind_the_writers_back_is_restored() {
    let running = Running::start(FakeDatapath::new());
    running.send(apply(vip(1), 1)).await;
    running.send(apply(vip(2), 2)).await;
    assert!(running.barrier().await);

    running.kernel.delete_entry(&vip(1));
    let deleted_at = Instant::now();
    let limit = Duration::from_secs(5);
    while !running.kernel.tables().contains_key(&vip(1)) && deleted_at.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        running.kernel.tables().get(&vip(1)).map(|t| &t.table),
        Some(&table(vip(1), 1)),
        "not restored within {limit:?}"
    );
    assert!(deleted_at.elapsed() <= CHECK_EVERY + Duration::from_millis(100));
    assert_eq!(running.view.repairs(), 1);
    let writer = running.stop().await;
    assert_eq!(writer.repairs(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_entry_altered_behind_the_writers_back_is_rewritten() {
    let running = Running::start(FakeDatapath::new());
    running.send(apply(vip(1), 1)).await;
    assert!(running.barrier().await);
    running.kernel.alter_entry(table(vip(1), 9));
    tokio::time::sleep(CHECK_EVERY + Duration::from_millis(10)).await;
    assert_eq!(running.kernel.tables()[&vip(1)].table, table(vip(1), 1));
    assert_eq!(running.view.repairs(), 1);
    // Nothing else drifts: later checks repair nothing.
    tokio::time::sleep(3 * CHECK_EVERY).await;
    assert_eq!(running.view.repairs(), 1);
    assert!(running.view.checks() >= 4);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_datapath_taken_apart_makes_every_vip_fail_until_it_is_back() {
    let running = Running::start(FakeDatapath::new());
    running.send(apply(vip(1), 1)).await;
    running.send(apply(vip(2), 2)).await;
    assert!(running.barrier().await);
    running.kernel.take_apart("link pin /x was removed");
    tokio::time::sleep(CHECK_EVERY + Duration::from_millis(10)).await;
    let failure = running.view.failing(&vip(1)).expect("failing");
    assert!(
        failure.error.contains("link pin /x was removed"),
        "{failure}"
    );
    assert!(failure.error.contains("restart failoverd"), "{failure}");
    assert_eq!(running.view.failing_count(), 2);
    assert!(running.view.datapath_failure().is_some());

    assert!(
        !running.barrier().await,
        "a barrier does not report written while nothing reads the maps"
    );

    running.kernel.restore();
    tokio::time::sleep(CHECK_EVERY).await;
    assert_eq!(running.view.failing(&vip(1)), None);
    assert_eq!(running.view.failing_count(), 0);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_check_that_cannot_look_changes_nothing() {
    let running = Running::start(FakeDatapath::new());
    running.send(apply(vip(1), 1)).await;
    assert!(running.barrier().await);
    running.kernel.fail_checks(Some(libc::EMFILE));
    tokio::time::sleep(2 * CHECK_EVERY + Duration::from_millis(10)).await;
    assert_eq!(running.view.failing(&vip(1)), None);
    assert_eq!(running.view.failing_count(), 0);
    // A deletion meanwhile is still repaired once checks work again.
    running.kernel.delete_entry(&vip(1));
    running.kernel.fail_checks(None);
    tokio::time::sleep(CHECK_EVERY).await;
    assert_eq!(running.kernel.tables()[&vip(1)].table, table(vip(1), 1));
    running.stop().await;
}

/// An id reused within one run for a backend that is never live: the
/// daemon tells the writer when it hands the id out.
#[tokio::test(start_paused = true)]
async fn a_reset_message_zeroes_an_id_no_table_holds_and_spares_live_ones() {
    let dp = FakeDatapath::new();
    let running = Running::start(dp);
    running.send(apply(vip(1), 7)).await;
    assert!(running.barrier().await);
    running.kernel.set_counters(7, counted(5));
    running.kernel.set_counters(9, counted(60));
    running
        .tx
        .send(WriterMessage::ResetCounters(9))
        .await
        .unwrap();
    running
        .tx
        .send(WriterMessage::ResetCounters(7))
        .await
        .unwrap();
    running.barrier().await;
    assert_eq!(running.kernel.counters(9), CounterTotals::default());
    assert_eq!(
        running.kernel.counters(7),
        counted(5),
        "a live id is spared"
    );
    running.stop().await;
}

/// Issue 10 defect 1: an id gets a new owner while the kernel still holds
/// the old owner's counts.
#[test]
fn an_id_installed_for_another_owner_counts_from_zero() {
    let mut dp = FakeDatapath::new();
    dp.apply(&table(vip(1), 7)).unwrap();
    dp.set_counters(7, counted(100));
    dp.set_counters(1, counted(100));
    let kernel = dp.handle();
    let mut w = Writer::new(dp).unwrap();
    // Same VIP, same id 7, another backend address.
    let mut moved = table(vip(1), 8);
    moved.backends[0].id = 7;
    w.queue(WriterCommand::Apply(Arc::new(moved)));
    w.flush();
    assert_eq!(kernel.counters(7), CounterTotals::default());
    assert_eq!(
        kernel.counters(1),
        counted(100),
        "the VIP kept its id and owner"
    );
}

#[test]
fn the_same_owner_keeps_its_counts_across_a_restart_and_removal() {
    let mut dp = FakeDatapath::new();
    dp.apply(&table(vip(1), 7)).unwrap();
    dp.set_counters(7, counted(100));
    let kernel = dp.handle();
    let mut w = Writer::new(dp).unwrap();
    w.queue(WriterCommand::Remove(vip(1)));
    w.flush();
    w.queue(apply(vip(1), 7));
    w.flush();
    assert_eq!(kernel.counters(7), counted(100));
    assert!(kernel.resets().is_empty());
}

/// The reported sequence: a reload drops backend 3 from the table, the
/// daemon restarts, and the allocator hands id 3 to a new backend that
/// has never been live (so is never installed).
#[test]
fn a_restart_resets_counters_no_pinned_table_names() {
    let mut dp = FakeDatapath::new();
    let backend = |port: u16, id| TableBackend {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        id,
    };
    let both = VipTable::weighted(vip(1), 1, vec![backend(2, 2), backend(3, 3)], &[1, 1]);
    dp.apply(&both.unwrap()).unwrap();
    dp.set_counters(2, counted(40));
    dp.set_counters(3, counted(60));
    // The reload: backend 3 is gone from the table, its counts stay.
    dp.apply(&VipTable::weighted(vip(1), 1, vec![backend(2, 2)], &[1]).unwrap())
        .unwrap();
    let kernel = dp.handle();

    // The restart.
    let w = Writer::new(dp).unwrap();
    let mut ids = crate::datapath::IdAllocator::from_tables(w.written().values().map(|t| &**t));
    assert_eq!(ids.allocate(), Ok(3), "the freed id is handed out again");
    assert_eq!(kernel.counters(3), CounterTotals::default());
    assert_eq!(
        kernel.counters(2),
        counted(40),
        "a pinned backend keeps its counts"
    );
}

/// A fake that logs the order of the calls that matter to passive health and termination.
struct Ordered {
    inner: FakeDatapath,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Datapath for Ordered {
    fn apply(&mut self, table: &VipTable) -> Result<(), DatapathError> {
        self.log.lock().unwrap().push(format!(
            "apply {:?}",
            table.backends.iter().map(|b| b.id).collect::<Vec<_>>()
        ));
        self.inner.apply(table)
    }
    fn remove(&mut self, vip: &Vip) -> Result<(), DatapathError> {
        self.inner.remove(vip)
    }
    fn tables(&self) -> Result<BTreeMap<Vip, InstalledTable>, DatapathError> {
        self.inner.tables()
    }
    fn counters(&self, id: u32) -> Result<CounterTotals, DatapathError> {
        self.inner.counters(id)
    }
    fn clear_suspect(&mut self, backend_id: u32) -> Result<(), DatapathError> {
        self.log.lock().unwrap().push(format!("clear {backend_id}"));
        self.inner.clear_suspect(backend_id)
    }
    fn terminate(&mut self, backend_ids: &[u32]) -> Result<Terminated, DatapathError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("terminate {backend_ids:?}"));
        self.inner.terminate(backend_ids)
    }
}

/// A client whose socket is aborted reconnects at once: the table it reconnects through
/// must already be the one without the backend.
#[tokio::test(start_paused = true)]
async fn sockets_are_aborted_and_marks_lifted_after_the_table_sent_before_them_is_written() {
    let inner = FakeDatapath::new();
    let kernel = inner.handle();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = Writer::new(Ordered {
        inner,
        log: log.clone(),
    })
    .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_writer(writer, rx, stop_rx));
    kernel.set_open_sockets(7, Terminated { tcp: 3, udp: 1 });
    // Queued together, before the writer runs: one batch.
    tx.send(apply(vip(1), 8).into()).await.unwrap();
    let (reply, answer) = tokio::sync::oneshot::channel();
    tx.send(WriterMessage::Terminate {
        backend_ids: vec![7],
        reply,
    })
    .await
    .unwrap();
    tx.send(WriterMessage::ClearSuspect(8)).await.unwrap();
    assert_eq!(
        answer.await.unwrap().unwrap(),
        Terminated { tcp: 3, udp: 1 }
    );
    assert_eq!(
        *log.lock().unwrap(),
        ["apply [8]", "clear 8", "terminate [7]"]
    );
    assert_eq!(kernel.terminations(), vec![vec![7]]);
    assert_eq!(kernel.suspect_clears(), vec![8]);
    stop.send(true).unwrap();
    task.await.unwrap();
}
