//! Accept: which worker serves a new connection. The kernel spreads connections over the
//! workers' `SO_REUSEPORT` sockets by a hash of the address pair, blind to how busy each worker
//! is. A connection stays on the worker that serves it for its whole life, so a few long-lived
//! keep-alive connections (a load balancer's, an ingress's) could leave one worker serving all
//! of them while another idles. The worker that accepts a connection therefore hands it to the
//! worker with the fewest open connections when that is not itself: the same least-connections
//! rule as Envoy's `exact_balance`, paid once per connection, never per request.
//!
//! A connection counts until it closes: a websocket (or other upgrade) tunnel, which outlives
//! hyper's part of the connection, keeps it counted (see `ConnInfo::lifetime`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

/// The count of a worker that takes no connections: never the least busy.
const GONE: usize = usize::MAX / 2;

/// A connection accepted by one worker for another to serve.
pub type Handoff = (std::net::TcpStream, SocketAddr);

pub struct Balancer {
    /// Open connections per worker, counted from the moment one is placed there.
    open: Box<[AtomicUsize]>,
    handoff: Vec<mpsc::UnboundedSender<Handoff>>,
}

impl Balancer {
    /// A balancer for `workers` workers and, per worker, the receiver of what it is handed.
    pub fn new(workers: usize) -> (Self, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        let (handoff, receivers) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let open = (0..workers).map(|_| AtomicUsize::new(0)).collect();
        (Self { open, handoff }, receivers)
    }

    /// Where a connection accepted by worker `here` is served: `here` unless another worker
    /// has fewer open connections. Counts it there at once, so a burst of accepts spreads.
    pub fn place(&self, here: usize) -> usize {
        let mine = self.count(here);
        let (least, fewest) = self
            .open
            .iter()
            .enumerate()
            .map(|(i, n)| (i, n.load(Ordering::Relaxed)))
            .min_by_key(|&(_, n)| n)
            .unwrap_or((here, mine));
        let target = if fewest < mine { least } else { here };
        self.open[target].fetch_add(1, Ordering::Relaxed);
        target
    }

    /// Gives a connection placed on worker `to` to it. When that worker takes no more (it is
    /// stopping, or never started), it is never chosen again and the connection is counted
    /// back on `from` and returned.
    pub fn hand_off(&self, from: usize, to: usize, conn: Handoff) -> Result<(), Handoff> {
        match self.handoff[to].send(conn) {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(conn)) => {
                self.open[to].store(GONE, Ordering::Relaxed);
                self.open[from].fetch_add(1, Ordering::Relaxed);
                Err(conn)
            }
        }
    }

    /// A connection counted on worker `worker` has ended (or was never served).
    pub fn closed(&self, worker: usize) {
        self.open[worker].fetch_sub(1, Ordering::Relaxed);
    }

    fn count(&self, worker: usize) -> usize {
        self.open
            .get(worker)
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Open connections per worker (metrics); a stopped worker has none.
    pub fn counts(&self) -> Vec<usize> {
        (0..self.open.len())
            .map(|w| self.count(w))
            .map(|n| if n >= GONE / 2 { 0 } else { n })
            .collect()
    }
}

/// Counts a served connection down when the task serving it ends, however it ends.
pub struct Open {
    pub balancer: Arc<Balancer>,
    pub worker: usize,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.balancer.closed(self.worker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_least_busy_worker() {
        let (b, _rx) = Balancer::new(3);
        // All accepted by worker 0: they spread round the three.
        let placed: Vec<usize> = (0..6).map(|_| b.place(0)).collect();
        assert_eq!(placed, [0, 1, 2, 0, 1, 2]);
        assert_eq!(b.counts(), [2, 2, 2]);
        // Worker 2's connections end: it gets the next ones, whoever accepts them.
        b.closed(2);
        b.closed(2);
        assert_eq!(b.place(1), 2);
        assert_eq!(b.place(0), 2);
        // Even: the accepting worker keeps it (no needless hand-off).
        assert_eq!(b.place(1), 1);
        assert_eq!(b.counts(), [2, 3, 2]);
    }

    #[test]
    fn a_hand_off_to_a_stopped_worker_comes_back() {
        let (b, mut rx) = Balancer::new(2);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let conn = || (std::net::TcpStream::connect(addr).unwrap(), addr);
        assert_eq!(b.place(0), 0);
        assert_eq!(b.place(0), 1);
        assert!(b.hand_off(0, 1, conn()).is_ok());
        assert!(rx[1].try_recv().is_ok());
        drop(rx.pop());
        assert!(b.hand_off(0, 1, conn()).is_err());
        assert_eq!(
            b.counts(),
            [2, 0],
            "counted back on the worker that kept it"
        );
        assert_eq!(b.place(0), 0, "a stopped worker is never chosen again");
    }
}
