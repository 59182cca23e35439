//! The CPU's cores, taken in turns by the models.
//!
//! The LLM and the embedder each split every product over all the cores (candle's
//! kernel pool and rayon's). Run at once, on their own threads, they would keep twice
//! as many threads busy as there are cores, the kernel pool's spinning workers taking
//! time slices the other needs. So on the CPU a model holds a turn for each step it
//! computes, and turns are served in the order they were asked for: an embedding waits
//! at most one LLM step, and a stream of embeddings cannot starve the LLM. (On 2 cores
//! the predict bench measured no loss from sharing freely beyond its noise; the turns
//! make the bound hold by construction, on machines where it would cost.) On a GPU the
//! models do not share the cores' time, and no turn is taken.

use std::sync::{Condvar, Mutex, PoisonError};

use candle_core::Device;

/// The one set of cores every model computes on.
static CORES: Turns = Turns::new();

/// A first-come, first-served lock (a ticket lock): each turn gets a number, and the
/// numbers are served in order.
struct Turns {
    tickets: Mutex<Tickets>,
    served: Condvar,
}

/// The next number to hand out and the number being served.
struct Tickets {
    next: u64,
    serving: u64,
}

impl Turns {
    const fn new() -> Self {
        Self {
            tickets: Mutex::new(Tickets {
                next: 0,
                serving: 0,
            }),
            served: Condvar::new(),
        }
    }

    fn take(&'static self) -> Turn {
        // The lock guards two counters only, never a model's work, so a poisoned one
        // (a panic between two lines of this file) still holds consistent numbers.
        let mut tickets = self.tickets.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = tickets.next;
        tickets.next += 1;
        while tickets.serving != mine {
            tickets = self
                .served
                .wait(tickets)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Turn { turns: self }
    }

    fn give_back(&self) {
        let mut tickets = self.tickets.lock().unwrap_or_else(PoisonError::into_inner);
        tickets.serving += 1;
        self.served.notify_all();
    }
}

/// The cores held by one model's step; the next turn is served when it is dropped.
pub struct Turn {
    turns: &'static Turns,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.turns.give_back();
    }
}

/// Waits for the cores when `device` is the CPU, and holds them until the returned
/// turn is dropped; none on other devices.
pub fn take(device: &Device) -> Option<Turn> {
    device.is_cpu().then(|| CORES.take())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    use super::*;

    #[test]
    fn one_turn_at_a_time_served_in_the_order_asked() {
        let turns: &'static Turns = Box::leak(Box::new(Turns::new()));
        let first = turns.take();
        let inside = Arc::new(AtomicUsize::new(0));
        let (order, served) = mpsc::channel();
        let mut waiting = Vec::new();
        for id in 0..3 {
            let (inside, order) = (Arc::clone(&inside), order.clone());
            waiting.push(std::thread::spawn(move || {
                let _turn = turns.take();
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two turns at once"
                );
                order.send(id).expect("sends");
                std::thread::sleep(Duration::from_millis(5));
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
            // Each thread has its ticket before the next one asks.
            while turns.tickets.lock().expect("counters").next != id + 2 {
                std::thread::yield_now();
            }
        }
        assert!(
            served.try_recv().is_err(),
            "a turn was served while one was held"
        );
        drop(first);
        for thread in waiting {
            thread.join().expect("no thread panics");
        }
        let order: Vec<u64> = served.try_iter().collect();
        assert_eq!(order, vec![0, 1, 2]);
    }
}
