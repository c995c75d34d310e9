//! A fixed team of worker threads for the forward pass's parallel loops: the calling
//! thread is worker 0, the helpers spin briefly between loops before they park.
//!
//! Why not rayon: between two layers there is a few microseconds to a few hundred of
//! serial work (buffer bookkeeping, the next layer's plan), long enough for rayon's idle
//! workers to fall asleep, and waking one costs 15-25 us on this VM, for each of the 60
//! (ResNet-50) to 120 (Inception-v3) parallel steps of a pass. Helpers here keep spinning
//! for [`SPIN`] after each loop, so the next one starts at once; past that they park, so
//! an idle node does not burn its cores.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a helper spins for the next loop before parking.
const SPIN: Duration = Duration::from_micros(300);

/// One parallel loop: `call(data, task)` for tasks `0..tasks`.
#[derive(Clone, Copy)]
struct Job {
    call: unsafe fn(*const (), usize),
    data: *const (),
    tasks: usize,
}

// SAFETY: `data` points at a `Sync` closure that outlives the loop (see `for_each`).
unsafe impl Send for Job {}

struct Shared {
    /// Id of the latest loop, bumped once per loop; helpers watch it.
    epoch: AtomicU64,
    /// The latest loop's id and job (`None` once it has finished).
    job: Mutex<(u64, Option<Job>)>,
    /// `(loop id << 32) | next unclaimed task`: a helper still holding an older loop's
    /// job cannot claim a task of a newer one.
    claim: AtomicU64,
    /// Tasks of the current loop not yet finished.
    pending: AtomicUsize,
    /// A task panicked: the loop re-raises it on the calling thread.
    panicked: AtomicBool,
    wake: Condvar,
    parked: Mutex<usize>,
    stop: AtomicBool,
}

/// The team; dropping it stops the helpers.
pub(crate) struct Team {
    shared: Arc<Shared>,
    threads: usize,
    helpers: Vec<std::thread::JoinHandle<()>>,
    /// Serialises loops from different calling threads (one pass at a time uses it).
    busy: Mutex<()>,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team")
            .field("threads", &self.threads)
            .finish()
    }
}

thread_local! {
    /// The team of the pass running on this thread, set by [`Team::install`].
    static CURRENT: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

impl Team {
    /// `threads` workers in all: the caller plus `threads - 1` helpers named `name-i`.
    pub fn new(threads: usize, name: &str) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: Mutex::new((0, None)),
            claim: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            wake: Condvar::new(),
            parked: Mutex::new(0),
            stop: AtomicBool::new(false),
        });
        let mut helpers = Vec::new();
        for i in 1..threads {
            let s = Arc::clone(&shared);
            helpers.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || helper(&s))?,
            );
        }
        Ok(Self {
            shared,
            threads,
            helpers,
            busy: Mutex::new(()),
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` with this team as the current one for [`for_each`] and [`threads`].
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        let _one_pass = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        struct Restore(*const Team);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(self as *const Team)));
        f()
    }

    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if tasks == 0 {
            return;
        }
        if self.threads == 1 || tasks == 1 {
            (0..tasks).for_each(f);
            return;
        }
        unsafe fn call(data: *const (), task: usize) {
            // SAFETY: `data` is the `&&(dyn Fn(usize) + Sync)` below, alive until every
            // task has finished (the caller waits for `pending == 0`).
            let f = unsafe { &*(data as *const &(dyn Fn(usize) + Sync)) };
            f(task);
        }
        let fref: &(dyn Fn(usize) + Sync) = f;
        let s = &*self.shared;
        let id = s.epoch.load(Ordering::Relaxed) + 1;
        s.pending.store(tasks, Ordering::Relaxed);
        s.claim.store(id << 32, Ordering::Relaxed);
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = (
            id,
            Some(Job {
                call,
                data: &fref as *const &(dyn Fn(usize) + Sync) as *const (),
                tasks,
            }),
        );
        s.epoch.store(id, Ordering::Release);
        if *s.parked.lock().unwrap_or_else(|e| e.into_inner()) > 0 {
            s.wake.notify_all();
        }
        work(s, id, tasks, &|t| f(t));
        // Wait for tasks the helpers claimed: they are short, so spin.
        let mut spins = 0u32;
        while s.pending.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        s.job.lock().unwrap_or_else(|e| e.into_inner()).1 = None;
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a task of a parallel loop panicked");
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.epoch.fetch_add(1, Ordering::Release);
        {
            let _g = self.shared.parked.lock();
            self.shared.wake.notify_all();
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

/// Claims and runs tasks of loop `id` until none is left (or a newer loop started).
fn work(s: &Shared, id: u64, tasks: usize, run: &dyn Fn(usize)) {
    let mut v = s.claim.load(Ordering::Relaxed);
    loop {
        let t = (v & 0xffff_ffff) as usize;
        if v >> 32 != id || t >= tasks {
            return;
        }
        match s
            .claim
            .compare_exchange_weak(v, v + 1, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(t))).is_err() {
                    s.panicked.store(true, Ordering::Relaxed);
                }
                s.pending.fetch_sub(1, Ordering::Release);
                v = s.claim.load(Ordering::Relaxed);
            }
            Err(now) => v = now,
        }
    }
}

fn helper(s: &Shared) {
    let mut seen = 0u64;
    loop {
        // Spin for the next loop, then park until woken.
        let start = Instant::now();
        let mut epoch = s.epoch.load(Ordering::Acquire);
        while epoch == seen && start.elapsed() < SPIN {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            epoch = s.epoch.load(Ordering::Acquire);
        }
        if epoch == seen {
            let mut parked = s.parked.lock().unwrap_or_else(|e| e.into_inner());
            *parked += 1;
            while s.epoch.load(Ordering::Acquire) == seen {
                parked = s.wake.wait(parked).unwrap_or_else(|e| e.into_inner());
            }
            *parked -= 1;
            epoch = s.epoch.load(Ordering::Acquire);
        }
        seen = epoch;
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        let (id, job) = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = job {
            // SAFETY: tasks are claimed only while `claim` carries this job's id, and the
            // caller keeps the job's closure alive until every claimed task has finished.
            work(s, id, job.tasks, &|t| unsafe { (job.call)(job.data, t) });
        }
    }
}

/// Number of workers of the current team (1 outside [`Team::install`]).
pub(crate) fn current_threads() -> usize {
    CURRENT.with(|c| {
        let p = c.get();
        if p.is_null() {
            1
        } else {
            // SAFETY: set by `install` for the duration of its closure on this thread.
            unsafe { &*p }.threads
        }
    })
}

/// `f(i)` for `i in 0..tasks` on the current team (serially outside [`Team::install`]).
pub(crate) fn for_each(tasks: usize, f: impl Fn(usize) + Sync) {
    // Taken for the loop's duration: a loop started inside a task runs serially.
    let p = CURRENT.with(|c| c.replace(std::ptr::null()));
    if p.is_null() {
        (0..tasks).for_each(f);
        return;
    }
    struct Restore(*const Team);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(p);
    // SAFETY: see `current_threads`.
    unsafe { &*p }.run(tasks, &f);
}

/// `f(i, chunk)` for each `chunk`-long piece of `data` (the last may be shorter), in
/// parallel on the current team.
pub(crate) fn for_each_chunk(data: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let chunk = chunk.max(1);
    let len = data.len();
    let base = crate::kernels::SendPtr(data.as_mut_ptr());
    for_each(len.div_ceil(chunk), |i| {
        let start = i * chunk;
        let end = (start + chunk).min(len);
        // SAFETY: pieces `start..end` of distinct tasks are disjoint and inside `data`,
        // which stays mutably borrowed until every task has finished.
        let piece = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
        f(i, piece);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_exactly_once_across_many_loops() {
        let team = Team::new(3, "t").unwrap();
        team.install(|| {
            assert_eq!(current_threads(), 3);
            for round in 0..2000usize {
                let tasks = round % 13;
                let hits: Vec<AtomicU32> = (0..tasks).map(|_| AtomicU32::new(0)).collect();
                for_each(tasks, |t| {
                    hits[t].fetch_add(1, Ordering::Relaxed);
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "round {round}"
                );
                // Let the helpers park now and then, so waking is exercised too.
                if round % 500 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        assert_eq!(current_threads(), 1, "install restores the previous team");
    }

    #[test]
    fn chunks_cover_the_slice_and_nested_loops_run_serially() {
        let team = Team::new(2, "t").unwrap();
        let mut data = vec![0.0f32; 1001];
        team.install(|| {
            for_each_chunk(&mut data, 100, |i, piece| {
                // A loop inside a task must not touch the running one.
                for_each(3, |_| {});
                for v in piece.iter_mut() {
                    *v = i as f32;
                }
            })
        });
        for (j, v) in data.iter().enumerate() {
            assert_eq!(*v, (j / 100) as f32);
        }
    }

    #[test]
    fn two_callers_share_a_team_one_pass_at_a_time() {
        let team = Arc::new(Team::new(2, "t").unwrap());
        let total = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let (team, total) = (Arc::clone(&team), Arc::clone(&total));
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        team.install(|| {
                            for_each(8, |_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            })
                        });
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
        assert_eq!(total.load(Ordering::Relaxed), 2 * 200 * 8);
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_team_still_works() {
        let team = Team::new(2, "t").unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            team.install(|| for_each(4, |t| assert_ne!(t, 2, "task 2 fails")))
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        team.install(|| {
            for_each(5, |_| {
                n.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(n.load(Ordering::Relaxed), 5);
    }
}
