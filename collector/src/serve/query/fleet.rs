//! Fleet mode: a trace lookup (`/api/v1/traces/{id}`, Jaeger's `/api/traces/{id}`) on a
//! collector that does not own the trace's partition is asked of the one that does, as the
//! owners topic says, and its answer passed back as it came: any collector answers any trace.
//! The forwarded request carries the caller's token and a mark, so that it is answered where
//! it lands and never sent on again.
//!
//! SQL in fleet mode reads every partition's sealed files and this collector's own unsealed
//! spans; [`freshness`] says, per partition, which the answer holds.

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

/// Adds the `Wayfinder-Freshness` header to a SQL answer in fleet mode: for each partition of the
/// spans topic, `P=live` when this collector owns it (its unsealed spans are in the answer),
/// else `P=sealed@TIME`, the time its newest sealed file was written (spans acknowledged since
/// about then are not in the answer yet), or `P=none` when nothing of it is sealed.
pub(super) fn with_freshness(state: &ApiState, mut response: Response) -> Response {
    if let Some(fresh) = freshness(state) {
        response.headers_mut().insert(super::FRESHNESS, fresh);
    }
    response
}

fn freshness(state: &ApiState) -> Option<http::HeaderValue> {
    let owners = state.owners.as_ref()?;
    let mut newest: std::collections::BTreeMap<u16, std::time::SystemTime> = Default::default();
    for file in state.engine.sealed_files() {
        if let Some(partition) = file.partition {
            let at = newest.entry(partition).or_insert(file.sealed_at);
            *at = (*at).max(file.sealed_at);
        }
    }
    let parts: Vec<String> = (0..owners.partitions())
        .map(|p| match owners.owner_of_partition(p as i32) {
            Owner::Me => format!("{p}=live"),
            _ => match newest.get(&(p as u16)) {
                Some(at) => format!("{p}=sealed@{}", humantime::format_rfc3339_seconds(*at)),
                None => format!("{p}=none"),
            },
        })
        .collect();
    http::HeaderValue::from_str(&parts.join(", ")).ok()
}
