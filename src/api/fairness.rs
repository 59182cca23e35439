//! Fair sharing between clients: each client (its API key; without one its address, or
//! behind a trusted balancer the last `X-Forwarded-For` address, the one the balancer
//! appended) may have a bounded number of requests in flight and a bounded request
//! rate; past either it is answered 429 with `Retry-After`, so one client flooding
//! cannot fill the model queues that every other client waits in. Public routes
//! (liveness, readiness, metrics) are never limited.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::ApiError;
use crate::auth::Caller;

/// Requests between sweeps of the rate limiter's idle clients.
const SWEEP_EVERY: u64 = 1024;

/// Whom a limit counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Client {
    /// The holder of the key with this id, wherever it calls from.
    Key(String),
    /// An anonymous caller at this address.
    Address(IpAddr),
}

/// Who sent a request, as the fair-share limits tell clients apart (`key:ID` or
/// `address:IP`): left in the request for the routes that start background jobs,
/// whose running count is capped per requester too.
#[derive(Debug, Clone)]
pub struct Requester(pub String);

impl Client {
    fn requester(&self) -> Requester {
        Requester(match self {
            Self::Key(id) => format!("key:{id}"),
            Self::Address(address) => format!("address:{address}"),
        })
    }
}

/// The per-client limits and what each client uses of them.
pub struct ClientLimits {
    max_in_flight: usize,
    in_flight: Mutex<HashMap<Client, usize>>,
    rate: Option<DefaultKeyedRateLimiter<Client>>,
    trust_forwarded_for: bool,
    seen: AtomicU64,
}

impl ClientLimits {
    /// At most `max_in_flight` requests at once and `per_second` a second (bursts of
    /// twice that) per client; 0 turns a limit off.
    pub fn new(max_in_flight: usize, per_second: u32, trust_forwarded_for: bool) -> Self {
        let rate = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(per_second.saturating_mul(2)).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            max_in_flight,
            in_flight: Mutex::new(HashMap::new()),
            rate,
            trust_forwarded_for,
            seen: AtomicU64::new(0),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<Client, usize>> {
        // Each update is one increment or decrement; a poisoned map is still whole.
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Who sent `request`: its key's holder; without a key the peer, or when the
    /// balancer is trusted the address it appended to `X-Forwarded-For` (the last;
    /// earlier ones are the client's to forge).
    fn client(&self, request: &Request, peer: IpAddr) -> Client {
        if let Some(Caller::Key(key)) = request.extensions().get::<Caller>() {
            return Client::Key(key.id.clone());
        }
        if !self.trust_forwarded_for {
            return Client::Address(peer);
        }
        Client::Address(
            request
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|last| last.trim().parse().ok())
                .unwrap_or(peer),
        )
    }

    /// Takes a slot for `client`, or says why not.
    fn admit(self: &Arc<Self>, client: Client) -> Result<Slot, ApiError> {
        if let Some(rate) = &self.rate {
            if self
                .seen
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(SWEEP_EVERY)
            {
                rate.retain_recent();
            }
            if rate.check_key(&client).is_err() {
                return Err(ApiError::RateLimited);
            }
        }
        if self.max_in_flight > 0 {
            let mut counts = self.counts();
            let count = counts.entry(client.clone()).or_insert(0);
            if *count >= self.max_in_flight {
                return Err(ApiError::TooManyInFlight(self.max_in_flight));
            }
            *count += 1;
        }
        Ok(Slot {
            limits: Arc::clone(self),
            client,
        })
    }
}

/// A request in flight; gives its slot back when the request's answer has been sent
/// whole, or is dropped.
struct Slot {
    limits: Arc<ClientLimits>,
    client: Client,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.limits.max_in_flight == 0 {
            return;
        }
        let mut counts = self.limits.counts();
        if let Some(count) = counts.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

/// The middleware: admits the request under its client's limits, or answers 429.
pub async fn limit(
    State(limits): State<Arc<ClientLimits>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let client = limits.client(&request, peer.ip());
    request.extensions_mut().insert(client.requester());
    match limits.admit(client) {
        Ok(slot) => {
            // The slot goes with the body, so that a streamed answer (predictions as
            // NDJSON or events) holds it for as long as it keeps the model busy.
            let (parts, body) = next.run(request).await.into_parts();
            Response::from_parts(parts, Body::new(SlotBody { body, _slot: slot }))
        }
        Err(refused) => refused.into_response(),
    }
}

/// An answer's body with its client's slot, given back when the body is dropped: sent
/// to its end, or abandoned by a client that went away.
struct SlotBody {
    body: Body,
    _slot: Slot,
}

impl HttpBody for SlotBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
