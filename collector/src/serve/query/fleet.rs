//! Fleet mode: a trace lookup (`/api/v1/traces/{id}`, Jaeger's `/api/traces/{id}`) on a
//! collector that does not own the trace's partition is asked of the one that does, as the
//! owners topic says, and its answer passed back as it came: any collector answers any trace.
//! The forwarded request carries the caller's token and a mark, so that it is answered where
//! it lands and never sent on again.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use http::header::{ACCEPT, ACCEPT_ENCODING, AUTHORIZATION};

use super::error::ApiError;
use super::forward::{FORWARDED, forward};
use super::state::ApiState;
use crate::ingest::kafka::owners::Owner;

/// The middleware of the trace routes.
pub(super) async fn to_owner(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(owners) = &state.owners else {
        return next.run(request).await;
    };
    if request.headers().contains_key(FORWARDED) {
        return next.run(request).await;
    }
    // The trace id is the last segment of both routes; a malformed one is the handler's to
    // refuse.
    let id = request
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return next.run(request).await;
    }
    match owners.owner_of(&id) {
        Owner::Me => {
            let answer = next.run(request).await;
            if answer.status() == http::StatusCode::NOT_FOUND
                && owners.catching_up(owners.partition_of(&id))
            {
                ApiError::Unavailable(
                    "this collector has just taken this trace's partition and is still reading it; retry"
                        .into(),
                )
                .into_response()
            } else {
                answer
            }
        }
        // Right after a rebalance, before the new owner has said so: a trace not found here
        // may be there, so not finding it is not an answer yet.
        Owner::Unknown => {
            let answer = next.run(request).await;
            if answer.status() == http::StatusCode::NOT_FOUND {
                ApiError::Unavailable(
                    "no collector has claimed this trace's partition yet (the fleet is rebalancing); retry"
                        .into(),
                )
                .into_response()
            } else {
                answer
            }
        }
        Owner::Other(base) => {
            // Taken out of the request (whose body is not `Sync`) before anything waits.
            let path = request
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let headers: Vec<_> = [AUTHORIZATION, ACCEPT, ACCEPT_ENCODING]
                .into_iter()
                .filter_map(|name| {
                    let value = request.headers().get(&name)?.clone();
                    Some((name, value))
                })
                .collect();
            drop(request);
            forward(&state.forwarder, &base, &path, headers).await
        }
    }
}
