//! The HTTP API: thin handlers over the library's services (the same ones
//! the command line calls), JSON in and out, errors as
//! `{"error": {"kind", "message"}}` with the stable kinds of [`ApiError`],
//! the bearer token checked on every route but `/healthz`, bodies bounded,
//! and the OpenAPI 3.1 description generated from the handlers' own
//! annotations (`GET /openapi.json`).

use super::Daemon;
use super::catalog::PluginEntry;
use super::live::Summary;
use super::metrics::PluginCalls;
use super::pool::PoolView;
use crate::backend::{
    ExecutionStatus, HistoryEntry, Job, JobStatus, ListFilter, NewJob, PoolStats, StateAnswer,
    StateOp, WorkerInfo,
};
use crate::engine::services::{self, Delivery, Description, Waited};
use crate::engine::{CancelOptions, EngineError};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

type D = State<Arc<Daemon>>;

// ---------------------------------------------------------------- errors

/// A failed request: its HTTP status and a stable `kind` clients can match
/// on (the message is for people).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    /// The value a compare-and-swap found instead of the expected one.
    current: Option<Value>,
}

/// The body of every error response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable: `invalid_json`, `invalid_request`, `unsupported_media_type`,
    /// `payload_too_large`, `unauthorized`, `not_found`, `method_not_allowed`,
    /// `unknown_execution`, `unknown_machine`, `unknown_plugin`,
    /// `unknown_queue`, `invalid_config`, `plugin`, `finished`, `owned`,
    /// `definition_changed`, `state_conflict`, `cas_mismatch`, `store`,
    /// `unavailable`, `internal`.
    pub kind: String,
    pub message: String,
    /// `cas_mismatch`: the value found (absent: the key is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            current: None,
        }
    }

    fn bad(kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, kind, message)
    }

    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::bad("invalid_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(kind = self.kind, "{}", self.message);
        }
        let body = ErrorBody {
            error: ErrorDetail {
                kind: self.kind.to_string(),
                message: self.message,
                current: self.current,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let message = e.to_string();
        match e {
            EngineError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_execution", message)
            }
            EngineError::Config(_) => ApiError::bad("invalid_config", message),
            EngineError::Plugin { error, .. } => {
                let kind = if error.kind() == crate::plugin::ErrorKind::Load {
                    "unknown_plugin"
                } else {
                    "plugin"
                };
                ApiError::bad(kind, message)
            }
            EngineError::Invalid(_) => ApiError::invalid(message),
            EngineError::Finished(_) => ApiError::new(StatusCode::CONFLICT, "finished", message),
            EngineError::Owned(_) => ApiError::new(StatusCode::CONFLICT, "owned", message),
            EngineError::Changed(_) => {
                ApiError::new(StatusCode::CONFLICT, "definition_changed", message)
            }
            EngineError::Store(s) => s.into(),
            EngineError::Interrupted { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
        }
    }
}

impl From<crate::backend::BackendError> for ApiError {
    fn from(e: crate::backend::BackendError) -> ApiError {
        if e.kind == crate::backend::StoreErrorKind::Conflict {
            // Another process took the execution over while this request
            // acted on it: nothing was written; asking again sees the new owner.
            return ApiError::new(StatusCode::CONFLICT, "owned", e.to_string());
        }
        let status = match e.kind {
            crate::backend::StoreErrorKind::Busy | crate::backend::StoreErrorKind::Full => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, "store", e.to_string())
    }
}

// ------------------------------------------------------------ extractors

/// A JSON request body, with errors in the API's form: 415 without a JSON
/// content type, 413 past the body limit, 400 for bad JSON (with line and
/// column) or JSON of the wrong shape.
pub struct Body<T>(pub T);

/// Like [`Body`], but an empty body is the type's default.
pub struct MaybeBody<T>(pub T);

async fn read_json<T: DeserializeOwned, S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<Option<T>, ApiError> {
    let json_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|t| {
            let mime = t
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        });
    let bytes = axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is larger than the daemon accepts (--max-body)",
                )
            } else {
                ApiError::invalid(format!("cannot read the request body: {r}"))
            }
        })?;
    if bytes.is_empty() {
        return Ok(None);
    }
    if json_type != Some(true) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON, sent with Content-Type: application/json",
        ));
    }
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad("invalid_json", format!("the body is not JSON: {e}")))?;
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| ApiError::invalid(format!("the body does not fit: {e}")))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match read_json(req, state).await? {
            Some(v) => Ok(Body(v)),
            None => Err(ApiError::invalid(
                "a JSON body is required (Content-Type: application/json)",
            )),
        }
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for MaybeBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Ok(MaybeBody(read_json(req, state).await?.unwrap_or_default()))
    }
}

/// Query parameters, with a 400 `invalid_request` naming the bad one.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Params(q.0))
            .map_err(|e| ApiError::invalid(format!("bad query: {}", e.body_text())))
    }
}

/// Path segments, with a 400 `invalid_request` when one cannot be read.
pub struct Segments<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Segments<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // Ids, channels and state keys are names: a control character (a
        // NUL that one store keeps and another cannot) is refused here.
        let raw = axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(format!("bad path: {}", e.body_text())))?;
        if let Some((name, _)) = raw.iter().find(|(_, v)| v.chars().any(char::is_control)) {
            return Err(ApiError::invalid(format!(
                "bad path: `{name}` has a control character"
            )));
        }
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Segments(p.0))
            .map_err(|e| ApiError::invalid(format!("bad path: {}", e.body_text())))
    }
}

fn duration(what: &str, text: &str, max: Duration) -> Result<Duration, ApiError> {
    let d = crate::duration::parse(text).map_err(|e| ApiError::invalid(format!("{what}: {e}")))?;
    if d > max {
        return Err(ApiError::invalid(format!(
            "{what}: {text} is longer than {}s",
            max.as_secs()
        )));
    }
    Ok(d)
}

/// Longest `?wait=` of a request.
const MAX_WAIT: Duration = Duration::from_secs(300);

// ------------------------------------------------------------- workflows

/// What to run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// A machine known to the daemon by name (its machines folder), or the
    /// path of a machine config on the daemon's host.
    pub machine: String,
    /// The machine's input (default `{}`).
    #[serde(default)]
    pub input: Option<Value>,
    /// The execution's id, an idempotency key: submitting it again returns
    /// the execution that exists.
    #[serde(default)]
    pub id: Option<String>,
    /// Cancelled with kind `timeout` if not finished this long after the
    /// submit, e.g. `10m`.
    #[serde(default)]
    pub deadline: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Wait up to this long for the result, e.g. `30s` (at most 300s);
    /// without it the answer comes at once.
    pub wait: Option<String>,
}

/// An execution as a submit (or resume) answers: its result once it has
/// one, its status while it has not.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkflowRef {
    pub id: String,
    /// False: an execution with this id existed already.
    pub created: bool,
    pub status: ExecutionStatus,
    /// The output (done) or `{kind, message, state}` (failed, cancelled);
    /// absent until it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    pub result_uri: String,
}

fn check_id(id: &str) -> Result<(), ApiError> {
    crate::backend::check_execution_id(id).map_err(ApiError::invalid)
}

/// What a submit body and its query ask for besides the machine: the
/// execution's id and deadline (checked), and how long to wait.
fn submit_options(
    id: Option<String>,
    deadline: Option<&str>,
    q: &WaitQuery,
) -> Result<(crate::engine::queue::SubmitOptions, Option<Duration>), ApiError> {
    if let Some(id) = &id {
        check_id(id)?;
    }
    let wait = q
        .wait
        .as_deref()
        .map(|w| duration("wait", w, MAX_WAIT))
        .transpose()?;
    let deadline = deadline
        .map(|t| duration("deadline", t, crate::duration::MAX))
        .transpose()?;
    Ok((crate::engine::queue::SubmitOptions { id, deadline }, wait))
}

/// Waits for a result, answering early when the daemon drains.
async fn wait_for(d: &Daemon, id: &str, wait: Duration) -> Result<Waited, ApiError> {
    let mut draining = d.draining.subscribe();
    let waited = services::wait_woken(d.backend.as_ref(), id, Some(wait), Some(&d.results));
    tokio::select! {
        w = waited => Ok(w?),
        _ = async { draining.wait_for(|s| *s).await.is_ok() } => {
            let cp = d.backend.load(id).await?.ok_or_else(|| EngineError::NotFound(id.into()))?;
            Ok(Waited::TimedOut(cp.status))
        }
    }
}

fn waited_ref(id: String, created: bool, waited: Waited) -> (StatusCode, Json<WorkflowRef>) {
    let result_uri = format!("flowhost://{id}/result");
    match waited {
        Waited::Finished(r) => (
            if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            Json(WorkflowRef {
                id,
                created,
                status: r.status,
                result: Some(r.value),
                result_uri,
            }),
        ),
        Waited::TimedOut(status) => (
            StatusCode::ACCEPTED,
            Json(WorkflowRef {
                id,
                created,
                status,
                result: None,
                result_uri,
            }),
        ),
    }
}

/// Submit an execution to the run queue.
#[utoipa::path(post, path = "/workflows", tag = "workflows", params(WaitQuery),
    request_body = SubmitBody,
    responses(
        (status = 201, description = "Created (with ?wait: and finished)", body = WorkflowRef),
        (status = 200, description = "It existed already (same id)", body = WorkflowRef),
        (status = 202, description = "Queued or still running when ?wait ran out", body = WorkflowRef),
        (status = "4XX", description = "Bad request", body = ErrorBody),
    ))]
async fn submit(
    State(d): D,
    Params(q): Params<WaitQuery>,
    Body(body): Body<SubmitBody>,
) -> Result<(StatusCode, Json<WorkflowRef>), ApiError> {
    let (options, wait) = submit_options(body.id, body.deadline.as_deref(), &q)?;
    let file = d
        .machine_file(&body.machine)
        .map_err(|m| ApiError::bad("unknown_machine", m))?;
    let input = body.input.unwrap_or_else(|| json!({}));
    let sent = d.engine.submit_with(&file, input, options).await?;
    answer(&d, sent, wait).await
}

/// What a submit answers: the result when it is there (waiting up to
/// `wait` for it), else the status.
async fn answer(
    d: &Daemon,
    sent: crate::engine::queue::Submitted,
    wait: Option<Duration>,
) -> Result<(StatusCode, Json<WorkflowRef>), ApiError> {
    d.added_work();
    if sent.created
        && d.feed.watched()
        && let Ok(Some(stored)) = d.backend.load(&sent.id).await
    {
        d.feed.publish(Summary::from(stored));
    }
    let waited = match wait {
        Some(w) => wait_for(d, &sent.id, w).await?,
        // Just stored: queued.
        None if sent.created => Waited::TimedOut(ExecutionStatus::Queued),
        None => match d.backend.read_result(&sent.id).await? {
            Some(r) => Waited::Finished(r),
            None => Waited::TimedOut(
                d.backend
                    .load(&sent.id)
                    .await?
                    .map_or(ExecutionStatus::Queued, |c| c.status),
            ),
        },
    };
    Ok(waited_ref(sent.id, sent.created, waited))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only executions in this status.
    pub status: Option<ExecutionStatus>,
    /// Only executions of this machine (its `data.name`, or file name).
    pub machine: Option<String>,
    /// Most executions in the page (1–1000, default 50).
    pub limit: Option<usize>,
    /// Where the page starts: `next_cursor` of the page before.
    pub cursor: Option<String>,
    /// Include child executions (fan-out children, launches).
    pub all: Option<bool>,
    /// Only executions created at or after this time (ms since the epoch).
    pub since: Option<u64>,
    /// Only executions created before this time (ms since the epoch).
    pub until: Option<u64>,
    /// Only executions whose id starts with this.
    pub prefix: Option<String>,
}

/// A page of executions, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page {
    pub workflows: Vec<Summary>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

fn parse_cursor(cursor: &str) -> Result<(u64, String), ApiError> {
    cursor
        .split_once('-')
        .and_then(|(ms, id)| Some((ms.parse().ok()?, id.to_string())))
        .filter(|(_, id)| !id.is_empty())
        .ok_or_else(|| ApiError::invalid(format!("cursor `{cursor}` is not one this API gave")))
}

async fn page(d: &Daemon, mut filter: ListFilter, limit: Option<usize>) -> Result<Page, ApiError> {
    let limit = limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be from 1 to 1000"));
    }
    // One more than the page, to know whether there is a next one.
    filter.limit = Some(limit + 1);
    let mut rows = d.backend.list(&filter).await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = more
        .then(|| rows.last().map(|c| format!("{}-{}", c.created_ms, c.id)))
        .flatten();
    Ok(Page {
        workflows: rows.into_iter().map(Summary::from).collect(),
        next_cursor,
    })
}

/// List executions, newest first, a page at a time.
#[utoipa::path(get, path = "/workflows", tag = "workflows", params(ListQuery),
    responses((status = 200, body = Page), (status = "4XX", body = ErrorBody)))]
async fn list(State(d): D, Params(q): Params<ListQuery>) -> Result<Json<Page>, ApiError> {
    if let (Some(since), Some(until)) = (q.since, q.until)
        && since >= until
    {
        return Err(ApiError::invalid(format!(
            "since ({since}) must be before until ({until})"
        )));
    }
    if let Some(prefix) = &q.prefix {
        crate::backend::check_execution_id(prefix)
            .map_err(|e| ApiError::invalid(format!("prefix: {e}")))?;
    }
    let filter = ListFilter {
        status: q.status,
        machine: q.machine,
        roots_only: !q.all.unwrap_or(false),
        after: q.cursor.as_deref().map(parse_cursor).transpose()?,
        created_from: q.since,
        created_before: q.until,
        id_prefix: q.prefix.filter(|p| !p.is_empty()),
        ..Default::default()
    };
    Ok(Json(page(&d, filter, q.limit).await?))
}

/// Executions by status: every one, the roots, and per machine.
#[derive(Debug, Serialize, ToSchema)]
pub struct CountsAnswer {
    /// Root executions (what the list shows by default) by status.
    pub roots: BTreeMap<String, u64>,
    /// Every execution, children included, by status.
    pub all: BTreeMap<String, u64>,
    /// Per machine, root or child, and status.
    pub machines: Vec<MachineCount>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MachineCount {
    pub machine: String,
    pub root: bool,
    pub status: ExecutionStatus,
    pub count: u64,
}

/// How many executions there are, by status and machine. Kept by the store
/// as executions change, so it costs the same at a million executions as at
/// ten.
#[utoipa::path(get, path = "/counts", tag = "workflows",
    responses((status = 200, body = CountsAnswer), (status = "4XX", body = ErrorBody)))]
async fn counts(State(d): D) -> Result<Json<CountsAnswer>, ApiError> {
    let rows = d.backend.counts().await?;
    let mut roots: BTreeMap<String, u64> = ExecutionStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    let mut all = roots.clone();
    for r in &rows {
        *all.entry(r.status.as_str().to_string()).or_default() += r.count;
        if r.root {
            *roots.entry(r.status.as_str().to_string()).or_default() += r.count;
        }
    }
    Ok(Json(CountsAnswer {
        roots,
        all,
        machines: rows
            .into_iter()
            .map(|r| MachineCount {
                machine: r.machine,
                root: r.root,
                status: r.status,
                count: r.count,
            })
            .collect(),
    }))
}

/// Executions as they change, as server-sent events: `changes` (a JSON
/// array of executions — id, parent, machine, status, state, step,
/// created_ms — the latest of each that changed since the last message) and
/// `reload` (changes were missed: read again what you show). Changes this
/// daemon's engine makes and the submissions it takes, and the executions
/// named by `watch` — first as they are, then their status changes,
/// whoever makes them; a comment every 15 s keeps the connection open.
#[utoipa::path(get, path = "/events", tag = "workflows", params(EventsQuery),
    responses((status = 200, content_type = "text/event-stream", body = String),
        (status = "4XX", body = ErrorBody)))]
async fn events(State(d): D, Params(q): Params<EventsQuery>) -> Result<Response, ApiError> {
    use super::live::{MAX_WATCHED, Next, Watch};
    use axum::response::sse::{Event, KeepAlive, Sse};
    let ids: Vec<String> = q
        .watch
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect();
    if ids.len() > MAX_WATCHED {
        return Err(ApiError::invalid(format!(
            "watch names {} executions; at most {MAX_WATCHED}",
            ids.len()
        )));
    }
    for id in &ids {
        crate::backend::check_execution_id(id)
            .map_err(|e| ApiError::invalid(format!("watch: {e}")))?;
    }
    let mut watch = Watch::new(ids);
    // The first message: the watched executions as they are now.
    let now = watch.changed(d.backend.as_ref()).await?;
    let first = (!now.is_empty()).then_some(Next::Changes(now));
    // The first look is the snapshot above; the next one a period later.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + WATCH_EVERY, WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (
        first,
        d.feed.subscribe(),
        d.draining.subscribe(),
        watch,
        tick,
        d.clone(),
    );
    let stream = futures_util::stream::unfold(
        state,
        |(first, mut sub, mut draining, mut watch, mut tick, d)| async move {
            let next = match first {
                Some(first) => first,
                None => loop {
                    tokio::select! {
                        n = sub.next() => break n,
                        _ = async { draining.wait_for(|d| *d).await.is_ok() } => break Next::Closed,
                        _ = tick.tick(), if !watch.is_empty() => {
                            match watch.changed(d.backend.as_ref()).await {
                                Ok(c) if !c.is_empty() => break Next::Changes(c),
                                Ok(_) => {}
                                Err(e) => tracing::debug!("events: watched executions: {e}"),
                            }
                        }
                    }
                },
            };
            let event = match next {
                Next::Changes(c) => Event::default()
                    .event("changes")
                    .json_data(&c)
                    .unwrap_or_else(|_| Event::default().event("reload").data("{}")),
                Next::Reload => Event::default().event("reload").data("{}"),
                Next::Closed => return None,
            };
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (None, sub, draining, watch, tick, d),
            ))
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// How often the executions a subscriber watches are read from the store.
const WATCH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Execution ids (comma-separated, at most 200) also read from the
    /// store every second, so their changes arrive even when another
    /// process makes them.
    pub watch: Option<String>,
}

/// One execution: status, state, children's progress, who runs it, input,
/// context, error, result.
#[utoipa::path(get, path = "/workflows/{id}", tag = "workflows",
    params(("id" = String, Path, description = "The execution id")),
    responses((status = 200, body = Description), (status = "4XX", body = ErrorBody)))]
async fn describe(
    State(d): D,
    Segments(id): Segments<String>,
) -> Result<Json<Description>, ApiError> {
    Ok(Json(services::describe(d.backend.as_ref(), &id).await?))
}

/// The state diagram of the machine an execution runs (from its pinned
/// definition): states with their kind, what they run and their child
/// machines, and the edges between them.
#[utoipa::path(get, path = "/workflows/{id}/graph", tag = "workflows",
    params(("id" = String, Path, description = "The execution id")),
    responses((status = 200, description = "`{machine, initial, states: [{name, kind, label?, children?}], edges: [{from, to, label?, kind}]}`"),
        (status = "4XX", body = ErrorBody)))]
async fn graph(State(d): D, Segments(id): Segments<String>) -> Result<Response, ApiError> {
    Ok(Json(services::graph(d.backend.as_ref(), &id).await?).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only events after this `seq`.
    pub after: Option<u64>,
    /// Most events (1–10000, default 1000).
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    pub events: Vec<HistoryEntry>,
}

/// What happened to an execution, oldest first.
#[utoipa::path(get, path = "/workflows/{id}/history", tag = "workflows",
    params(("id" = String, Path, description = "The execution id"), HistoryQuery),
    responses((status = 200, body = HistoryPage), (status = "4XX", body = ErrorBody)))]
async fn history(
    State(d): D,
    Segments(id): Segments<String>,
    Params(q): Params<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid("limit must be from 1 to 10000"));
    }
    let events = services::history(d.backend.as_ref(), &id, q.after.unwrap_or(0), limit).await?;
    Ok(Json(HistoryPage { events }))
}

/// Which children a cancel reaches besides the fan-out's.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CancelChildren {
    /// Launched (fire-and-forget) children too.
    Launched,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Kept as the execution's error and result.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub children: Option<CancelChildren>,
    /// Wait up to this long for running executions to stop, e.g. `5s`.
    #[serde(default)]
    pub wait: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CancelAnswer {
    /// Executions ended `cancelled` (the one named and its descendants).
    pub ended: usize,
    /// Executions still running: their workers were asked to stop them.
    pub requested: Vec<String>,
}

/// Cancel an execution in any status, with its children.
#[utoipa::path(post, path = "/workflows/{id}/cancel", tag = "workflows",
    params(("id" = String, Path, description = "The execution id")),
    request_body(content = Option<CancelBody>, description = "Optional"),
    responses(
        (status = 200, description = "Cancelled", body = CancelAnswer),
        (status = 202, description = "Asked; some are still running", body = CancelAnswer),
        (status = "4XX", body = ErrorBody)))]
async fn cancel(
    State(d): D,
    Segments(id): Segments<String>,
    MaybeBody(body): MaybeBody<CancelBody>,
) -> Result<(StatusCode, Json<CancelAnswer>), ApiError> {
    let wait = body
        .wait
        .as_deref()
        .map(|w| duration("wait", w, MAX_WAIT))
        .transpose()?;
    let options = CancelOptions {
        reason: body
            .reason
            .unwrap_or_else(|| "cancelled through the API".to_string()),
        launched: body.children.is_some(),
    };
    let done = match wait {
        Some(w) => d.engine.cancel_and_wait(&id, &options, w).await?,
        None => d.engine.cancel(&id, &options).await?,
    };
    let status = if done.requested.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        Json(CancelAnswer {
            ended: done.ended,
            requested: done.requested,
        }),
    ))
}

/// Continue an execution: a failed one from the state that failed (a new
/// attempt), one that no process runs from its checkpoint.
#[utoipa::path(post, path = "/workflows/{id}/resume", tag = "workflows",
    params(("id" = String, Path, description = "The execution id")),
    responses((status = 202, description = "It goes on", body = WorkflowRef), (status = "4XX", body = ErrorBody)))]
async fn resume(
    State(d): D,
    Segments(id): Segments<String>,
) -> Result<(StatusCode, Json<WorkflowRef>), ApiError> {
    let view = services::describe(d.backend.as_ref(), &id).await?;
    let engine = d.engine.clone();
    let target = id.clone();
    match view.status {
        ExecutionStatus::Failed => {
            // Checked here, so a child is refused with a 4xx.
            let root = engine.owner_of(&id).await?;
            if root.id != id || root.fan_in.is_some() {
                return Err(ApiError::invalid(format!(
                    "execution {id} is a child: resume its root, which re-runs the state that ran it"
                )));
            }
            tokio::spawn(async move {
                if let Err(e) = engine.retry(&target).await {
                    tracing::warn!(execution = %target, "retry: {e}");
                }
            });
        }
        _ if view.abandoned => {
            let root = view.root.clone();
            d.metrics.resumed(&view.machine);
            tokio::spawn(async move {
                if let Err(e) = engine.resume(&root).await {
                    tracing::warn!(execution = %root, "resume: {e}");
                }
            });
        }
        s if s.is_terminal() => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "finished",
                format!("execution {id} is {s}; only a failed one can be resumed"),
            ));
        }
        s => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "owned",
                format!("execution {id} is {s} and a worker has it (or will): nothing to resume"),
            ));
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(WorkflowRef {
            result_uri: format!("flowhost://{id}/result"),
            id,
            created: false,
            status: ExecutionStatus::Running,
            result: None,
        }),
    ))
}

/// Where a signal landed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SignalAnswer {
    /// `awaited`: the execution waited on this channel and goes on;
    /// `other_channel`: it waits on another (the signal is kept);
    /// `not_waiting`: it waits on nothing now (the signal is kept).
    pub delivery: String,
    /// The channel it waits on, when another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waits_on: Option<String>,
}

/// Send data to an execution on a channel (its `wait_for`).
#[utoipa::path(post, path = "/workflows/{id}/signal/{channel}", tag = "workflows",
    params(("id" = String, Path, description = "The execution id"),
           ("channel" = String, Path, description = "The channel its wait_for names")),
    request_body(content = Option<Value>, description = "The signal's data (default null)"),
    responses((status = 202, body = SignalAnswer), (status = "4XX", body = ErrorBody)))]
async fn signal(
    State(d): D,
    Segments((id, channel)): Segments<(String, String)>,
    MaybeBody(data): MaybeBody<Value>,
) -> Result<(StatusCode, Json<SignalAnswer>), ApiError> {
    if channel.starts_with("flowhost:") {
        return Err(ApiError::invalid(format!(
            "channel `{channel}` is reserved for flowhost itself"
        )));
    }
    let sent = d.engine.signal(&id, &channel, data).await?;
    let (delivery, waits_on) = match sent.delivery {
        Delivery::Awaited => ("awaited", None),
        Delivery::OtherChannel(c) => ("other_channel", Some(c)),
        Delivery::NotWaiting(_) => ("not_waiting", None),
    };
    if delivery == "awaited" && !sent.queued {
        // Started by `flowhost run` and parked: continue it here.
        let engine = d.engine.clone();
        tokio::spawn(async move {
            if let Err(e) = engine.resume(&sent.root).await {
                tracing::warn!(execution = %sent.root, "resume after a signal: {e}");
            }
        });
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(SignalAnswer {
            delivery: delivery.to_string(),
            waits_on,
        }),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Most children in the page (1–1000, default 50).
    pub limit: Option<usize>,
    /// `next_cursor` of the page before.
    pub cursor: Option<String>,
}

/// An execution's children (fan-out children and launches) and their status.
#[utoipa::path(get, path = "/workflows/{id}/jobs", tag = "workflows",
    params(("id" = String, Path, description = "The execution id"), PageQuery),
    responses((status = 200, body = Page), (status = "4XX", body = ErrorBody)))]
async fn children(
    State(d): D,
    Segments(id): Segments<String>,
    Params(q): Params<PageQuery>,
) -> Result<Json<Page>, ApiError> {
    exists(&d, &id).await?;
    let filter = ListFilter {
        parent: Some(id),
        after: q.cursor.as_deref().map(parse_cursor).transpose()?,
        ..Default::default()
    };
    Ok(Json(page(&d, filter, q.limit).await?))
}

/// A MapReduce: every item through the mapper (spread over the workers),
/// the list of outputs through the reducer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MapReduceBody {
    /// A processor plugin that maps one item.
    pub mapper: String,
    /// A processor plugin that gets the list of the mapper's outputs.
    pub reducer: String,
    /// The items (a list).
    #[serde(default)]
    pub items: Option<Vec<Value>>,
    /// Or the items from a finished execution's result (a list):
    /// `flowhost://<id>/result` or an id.
    #[serde(default)]
    pub items_from: Option<String>,
    /// Items mapped at once (default 16).
    #[serde(default)]
    pub parallelism: Option<u32>,
    /// A warm pool for the mapper (`min`, `max`, `idle_timeout`,
    /// `max_uses`, `warm_up`): pooled instances map the items.
    #[serde(default)]
    pub pool: Option<crate::warm::OperatorPool>,
    /// The execution's id, an idempotency key.
    #[serde(default)]
    pub id: Option<String>,
    /// Cancelled with kind `timeout` if not finished this long after the
    /// submit, e.g. `10m`.
    #[serde(default)]
    pub deadline: Option<String>,
}

/// Submit a MapReduce: an ordinary execution (status, history, cancel work).
#[utoipa::path(post, path = "/workflows/mapreduce", tag = "workflows", params(WaitQuery),
    request_body = MapReduceBody,
    responses(
        (status = 201, description = "Created (with ?wait: and finished)", body = WorkflowRef),
        (status = 200, description = "It existed already (same id)", body = WorkflowRef),
        (status = 202, description = "Queued or still running when ?wait ran out", body = WorkflowRef),
        (status = "4XX", description = "Bad request", body = ErrorBody),
    ))]
async fn mapreduce(
    State(d): D,
    Params(q): Params<WaitQuery>,
    Body(body): Body<MapReduceBody>,
) -> Result<(StatusCode, Json<WorkflowRef>), ApiError> {
    let (options, wait) = submit_options(body.id, body.deadline.as_deref(), &q)?;
    let items = match (body.items, body.items_from) {
        (Some(items), None) => Value::Array(items),
        (None, Some(from)) => {
            let id = crate::backend::parse_result_uri(&from).map_err(ApiError::invalid)?;
            match d.backend.read_result(&id).await? {
                Some(r) if r.status == ExecutionStatus::Done && r.value.is_array() => r.value,
                Some(r) => {
                    return Err(ApiError::invalid(format!(
                        "items_from: execution {id} ended {} with a result that is not a list",
                        r.status
                    )));
                }
                None => return Err(EngineError::NotFound(id).into()),
            }
        }
        _ => return Err(ApiError::invalid("give either items or items_from")),
    };
    for (what, name) in [("mapper", &body.mapper), ("reducer", &body.reducer)] {
        if !d.catalog.contains(name) {
            return Err(ApiError::bad(
                "unknown_plugin",
                format!(
                    "{what}: no plugin `{}` in the daemon's plugins folder",
                    crate::text::escape_control(name)
                ),
            ));
        }
    }
    let job = crate::engine::mapreduce::MapReduce {
        mapper: body.mapper,
        reducer: body.reducer,
        parallelism: body.parallelism.unwrap_or(16),
        pool: body.pool,
    };
    let sent = d
        .engine
        .submit_mapreduce(&job, items, &d.config.work_dir, options)
        .await?;
    answer(&d, sent, wait).await
}

// ----------------------------------------------------------------- state

async fn exists(d: &Daemon, id: &str) -> Result<(), ApiError> {
    match d.backend.load(id).await? {
        Some(_) => Ok(()),
        None => Err(EngineError::NotFound(id.to_string()).into()),
    }
}

/// The execution's state: every key (the same state its plugins reach).
#[utoipa::path(get, path = "/workflows/{id}/state", tag = "state",
    params(("id" = String, Path, description = "The execution id")),
    responses((status = 200, body = BTreeMap<String, Value>), (status = "4XX", body = ErrorBody)))]
async fn get_state(
    State(d): D,
    Segments(id): Segments<String>,
) -> Result<Json<BTreeMap<String, Value>>, ApiError> {
    exists(&d, &id).await?;
    Ok(Json(d.backend.state(&id).await?))
}

/// Replace the execution's whole state.
#[utoipa::path(put, path = "/workflows/{id}/state", tag = "state",
    params(("id" = String, Path, description = "The execution id")),
    request_body = BTreeMap<String, Value>,
    responses((status = 200, body = BTreeMap<String, Value>), (status = "4XX", body = ErrorBody)))]
async fn put_state(
    State(d): D,
    Segments(id): Segments<String>,
    Body(values): Body<BTreeMap<String, Value>>,
) -> Result<Json<BTreeMap<String, Value>>, ApiError> {
    exists(&d, &id).await?;
    d.backend.state_replace(&id, values.clone()).await?;
    Ok(Json(values))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IncrementBody {
    /// Added to the integer (default 1; negative subtracts).
    #[serde(default)]
    pub by: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueBody {
    pub value: Value,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CasBody {
    /// The value it must have (absent or null: the key must be absent).
    #[serde(default)]
    pub expected: Option<Value>,
    /// The value to put (absent or null: remove the key).
    #[serde(default)]
    pub new: Option<Value>,
}

/// What an atomic state operation answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StateResult {
    /// increment: the new integer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<i64>,
    /// append: the list's new length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// add: whether the value was new to the set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added: Option<bool>,
    /// cas: true (a mismatch is a 409 `cas_mismatch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swapped: Option<bool>,
}

async fn apply(d: &Daemon, id: &str, key: &str, op: StateOp) -> Result<StateResult, ApiError> {
    exists(d, id).await?;
    if key.is_empty() || key.len() > 200 {
        return Err(ApiError::invalid("a state key is 1–200 characters"));
    }
    let answer = d
        .backend
        .state_apply(id, key, op)
        .await?
        .map_err(|c| ApiError::new(StatusCode::CONFLICT, "state_conflict", c.0))?;
    let mut r = StateResult {
        value: None,
        length: None,
        added: None,
        swapped: None,
    };
    match answer {
        StateAnswer::Count(n) => r.value = Some(n),
        StateAnswer::Length(n) => r.length = Some(n),
        StateAnswer::Added(a) => r.added = Some(a),
        StateAnswer::Swapped { swapped: true, .. } => r.swapped = Some(true),
        StateAnswer::Swapped {
            swapped: false,
            current,
        } => {
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                "cas_mismatch",
                format!("state `{key}` is not the expected value; nothing was changed"),
            );
            e.current = current;
            return Err(e);
        }
        StateAnswer::Done => {}
    }
    Ok(r)
}

/// Add to an integer key atomically (absent counts as 0); returns the new value.
#[utoipa::path(post, path = "/workflows/{id}/state/{key}/increment", tag = "state",
    params(("id" = String, Path, description = "The execution id"), ("key" = String, Path, description = "The state key")),
    request_body(content = Option<IncrementBody>, description = "Optional: {\"by\": n}"),
    responses((status = 200, body = StateResult), (status = "4XX", body = ErrorBody)))]
async fn increment(
    State(d): D,
    Segments((id, key)): Segments<(String, String)>,
    MaybeBody(body): MaybeBody<IncrementBody>,
) -> Result<Json<StateResult>, ApiError> {
    let op = StateOp::Increment(body.by.unwrap_or(1));
    Ok(Json(apply(&d, &id, &key, op).await?))
}

/// Push onto a list key atomically; returns the new length.
#[utoipa::path(post, path = "/workflows/{id}/state/{key}/append", tag = "state",
    params(("id" = String, Path, description = "The execution id"), ("key" = String, Path, description = "The state key")),
    request_body = ValueBody,
    responses((status = 200, body = StateResult), (status = "4XX", body = ErrorBody)))]
async fn append(
    State(d): D,
    Segments((id, key)): Segments<(String, String)>,
    Body(body): Body<ValueBody>,
) -> Result<Json<StateResult>, ApiError> {
    Ok(Json(
        apply(&d, &id, &key, StateOp::Append(body.value)).await?,
    ))
}

/// Add to a set key (a list of distinct values) atomically.
#[utoipa::path(post, path = "/workflows/{id}/state/{key}/add", tag = "state",
    params(("id" = String, Path, description = "The execution id"), ("key" = String, Path, description = "The state key")),
    request_body = ValueBody,
    responses((status = 200, body = StateResult), (status = "4XX", body = ErrorBody)))]
async fn add(
    State(d): D,
    Segments((id, key)): Segments<(String, String)>,
    Body(body): Body<ValueBody>,
) -> Result<Json<StateResult>, ApiError> {
    Ok(Json(apply(&d, &id, &key, StateOp::Add(body.value)).await?))
}

/// Compare-and-swap a key: a mismatch is a 409 `cas_mismatch` carrying the value found.
#[utoipa::path(post, path = "/workflows/{id}/state/{key}/cas", tag = "state",
    params(("id" = String, Path, description = "The execution id"), ("key" = String, Path, description = "The state key")),
    request_body = CasBody,
    responses((status = 200, body = StateResult), (status = 409, body = ErrorBody), (status = "4XX", body = ErrorBody)))]
async fn cas(
    State(d): D,
    Segments((id, key)): Segments<(String, String)>,
    Body(body): Body<CasBody>,
) -> Result<Json<StateResult>, ApiError> {
    let null_is_absent = |v: Option<Value>| v.filter(|v| !v.is_null());
    let op = StateOp::CompareAndSwap {
        expected: null_is_absent(body.expected),
        new: null_is_absent(body.new),
    };
    Ok(Json(apply(&d, &id, &key, op).await?))
}

// ----------------------------------------------------------------- pools

fn check_queue(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "pool name `{}` must be 1–100 characters of letters, digits and - _ .",
            crate::text::escape_control(name)
        )))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushBody {
    /// What the pool's processor gets.
    pub payload: Value,
    /// Higher runs first (default 0).
    #[serde(default)]
    pub priority: Option<i64>,
    /// Not run before this long from now, e.g. `10s`.
    #[serde(default)]
    pub delay: Option<String>,
    /// Failures retried before the job is poisoned (default 3).
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// A second push with the same key returns the first job.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Pushed {
    pub id: i64,
    /// False: a job with this idempotency key existed.
    pub created: bool,
}

/// Add a job to a pool.
#[utoipa::path(post, path = "/pools/{name}/jobs", tag = "pools",
    params(("name" = String, Path, description = "The pool")),
    request_body = PushBody,
    responses((status = 201, body = Pushed), (status = 200, description = "It existed (same key)", body = Pushed), (status = "4XX", body = ErrorBody)))]
async fn push(
    State(d): D,
    Segments(name): Segments<String>,
    Body(body): Body<PushBody>,
) -> Result<(StatusCode, Json<Pushed>), ApiError> {
    check_queue(&name)?;
    if name == crate::engine::queue::EXECUTIONS_POOL {
        return Err(ApiError::invalid(format!(
            "`{name}` is the run queue: submit executions with POST /workflows"
        )));
    }
    let mut job = NewJob::new(body.payload);
    job.priority = body.priority.unwrap_or(0);
    if let Some(delay) = &body.delay {
        job.delay_ms = duration("delay", delay, crate::duration::MAX)?.as_millis() as u64;
    }
    if let Some(n) = body.max_retries {
        job.max_retries = n.min(1000);
    }
    job.idempotency_key = body.idempotency_key;
    let (id, created) = d.backend.push(&name, job).await?;
    d.added_work();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(Pushed { id, created })))
}

/// A pool: its counts, the oldest due job's wait, the daemon's workers for
/// it, and its poisoned jobs (the newest 20).
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolAnswer {
    pub name: String,
    pub stats: PoolStats,
    pub oldest_waiting_seconds: f64,
    /// The daemon's own workers for it (absent: it runs none).
    pub workers: Option<PoolView>,
    pub poisoned: Vec<Job>,
    /// Jobs finished per second over the last minutes (for the queues
    /// this daemon runs workers for).
    pub throughput: super::live::Throughput,
}

async fn pool_answer(d: &Daemon, name: String) -> Result<PoolAnswer, ApiError> {
    let stats = d.backend.stats(&name).await?;
    let now = d.backend.clock().now_ms();
    let oldest_waiting_seconds = stats
        .oldest_due_ms
        .map_or(0.0, |ms| now.saturating_sub(ms) as f64 / 1e3);
    let poisoned = d.backend.jobs(&name, Some(JobStatus::Poisoned), 20).await?;
    Ok(PoolAnswer {
        workers: d.pool(&name).map(|p| p.view()),
        throughput: d.rates.of(&name),
        name,
        stats,
        oldest_waiting_seconds,
        poisoned,
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolsAnswer {
    pub pools: Vec<PoolAnswer>,
}

/// The queues this daemon runs workers for (the run queue first), then the
/// pools of other registered workers, each as `GET /pools/{name}` shows it.
#[utoipa::path(get, path = "/pools", tag = "pools",
    responses((status = 200, body = PoolsAnswer), (status = "4XX", body = ErrorBody)))]
async fn pools(State(d): D) -> Result<Json<PoolsAnswer>, ApiError> {
    let mut names: Vec<String> = d.pools.iter().map(|p| p.queue().to_string()).collect();
    let mut others: Vec<String> = d
        .backend
        .workers(None)
        .await?
        .into_iter()
        .map(|w| w.pool)
        .filter(|p| !names.contains(p))
        .collect();
    others.sort_unstable();
    others.dedup();
    names.extend(others);
    let mut pools = Vec::with_capacity(names.len());
    for name in names {
        pools.push(pool_answer(&d, name).await?);
    }
    Ok(Json(PoolsAnswer { pools }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// Only jobs in this status.
    pub status: Option<JobStatus>,
    /// Most jobs (1–1000, default 50).
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobsAnswer {
    pub jobs: Vec<Job>,
}

/// A pool's jobs, oldest first.
#[utoipa::path(get, path = "/pools/{name}/jobs", tag = "pools",
    params(("name" = String, Path, description = "The pool"), JobsQuery),
    responses((status = 200, body = JobsAnswer), (status = "4XX", body = ErrorBody)))]
async fn pool_jobs(
    State(d): D,
    Segments(name): Segments<String>,
    Params(q): Params<JobsQuery>,
) -> Result<Json<JobsAnswer>, ApiError> {
    check_queue(&name)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be from 1 to 1000"));
    }
    Ok(Json(JobsAnswer {
        jobs: d.backend.jobs(&name, q.status, limit).await?,
    }))
}

/// A pool's counts and health.
#[utoipa::path(get, path = "/pools/{name}", tag = "pools",
    params(("name" = String, Path, description = "The pool (`executions` is the run queue)")),
    responses((status = 200, body = PoolAnswer), (status = "4XX", body = ErrorBody)))]
async fn pool(State(d): D, Segments(name): Segments<String>) -> Result<Json<PoolAnswer>, ApiError> {
    check_queue(&name)?;
    Ok(Json(pool_answer(&d, name).await?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequeueBody {
    /// These poisoned jobs (default: every poisoned job of the pool).
    #[serde(default)]
    pub ids: Option<Vec<i64>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Requeued {
    pub requeued: u64,
}

/// Put poisoned jobs back to pending with fresh retries.
#[utoipa::path(post, path = "/pools/{name}/requeue", tag = "pools",
    params(("name" = String, Path, description = "The pool")),
    request_body(content = Option<RequeueBody>, description = "Optional"),
    responses((status = 200, body = Requeued), (status = "4XX", body = ErrorBody)))]
async fn requeue(
    State(d): D,
    Segments(name): Segments<String>,
    MaybeBody(body): MaybeBody<RequeueBody>,
) -> Result<Json<Requeued>, ApiError> {
    check_queue(&name)?;
    let ids = body.ids.unwrap_or_default();
    let requeued = d.backend.requeue(&name, &ids).await?;
    d.added_work();
    Ok(Json(Requeued { requeued }))
}

// --------------------------------------------------------------- workers

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkersAnswer {
    /// Every worker registered in the store (this daemon's and others').
    pub workers: Vec<WorkerView>,
    /// This daemon's own workers, per queue.
    pub pools: Vec<PoolView>,
}

/// A worker and what it holds now.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerView {
    #[serde(flatten)]
    pub worker: WorkerInfo,
    /// Jobs it has claimed (at most 100).
    pub current: Vec<CurrentJob>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CurrentJob {
    pub id: i64,
    /// The execution it runs (a job of the run queue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution: Option<String>,
}

/// Most claimed jobs read per pool to say what workers hold.
const CLAIMED_SHOWN: usize = 1000;

/// Registered workers with what each holds, and the daemon's own worker pools.
#[utoipa::path(get, path = "/workers", tag = "workers",
    responses((status = 200, body = WorkersAnswer)))]
async fn workers(State(d): D) -> Result<Json<WorkersAnswer>, ApiError> {
    let registered = d.backend.workers(None).await?;
    let mut pools: Vec<&str> = registered.iter().map(|w| w.pool.as_str()).collect();
    pools.sort_unstable();
    pools.dedup();
    let mut held: BTreeMap<String, Vec<CurrentJob>> = BTreeMap::new();
    for pool in pools {
        for job in d
            .backend
            .jobs(pool, Some(JobStatus::Claimed), CLAIMED_SHOWN)
            .await?
        {
            if let Some(w) = job.worker {
                let list = held.entry(w).or_default();
                if list.len() < 100 {
                    list.push(CurrentJob {
                        id: job.id,
                        execution: job
                            .payload
                            .get("execution")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                    });
                }
            }
        }
    }
    Ok(Json(WorkersAnswer {
        workers: registered
            .into_iter()
            .map(|w| WorkerView {
                current: held.remove(&w.id).unwrap_or_default(),
                worker: w,
            })
            .collect(),
        pools: d.pools.iter().map(|p| p.view()).collect(),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleBody {
    /// Hold the queue's workers at this many (at most --max-workers); null
    /// or absent: follow the queue's depth again.
    #[serde(default)]
    pub workers: Option<u32>,
    /// Which queue (default `executions`, the run queue).
    #[serde(default)]
    pub queue: Option<String>,
}

/// Set the size of a worker pool (the seed's `Scale(n)`), or hand it back
/// to autoscaling.
#[utoipa::path(post, path = "/workers/scale", tag = "workers",
    request_body = ScaleBody,
    responses((status = 200, body = PoolView), (status = "4XX", body = ErrorBody)))]
async fn scale(State(d): D, Body(body): Body<ScaleBody>) -> Result<Json<PoolView>, ApiError> {
    let queue = body
        .queue
        .unwrap_or_else(|| crate::engine::queue::EXECUTIONS_POOL.to_string());
    let Some(pool) = d.pool(&queue) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_queue",
            format!(
                "the daemon runs no workers for `{}` (serve --pool NAME=PROCESSOR adds one)",
                crate::text::escape_control(&queue)
            ),
        ));
    };
    pool.set_fixed(body.workers).map_err(ApiError::invalid)?;
    pool.tick().await;
    Ok(Json(pool.view()))
}

// ------------------------------------------------------ plugins, machines

#[derive(Debug, Serialize, ToSchema)]
pub struct PluginAnswer {
    #[serde(flatten)]
    pub plugin: PluginEntry,
    #[serde(flatten)]
    pub calls: PluginCalls,
    /// Its warm pool (reused plugins that ran here).
    pub warm: Option<WarmView>,
}

/// A plugin's warm pool so far.
#[derive(Debug, Serialize, ToSchema)]
pub struct WarmView {
    pub hits: u64,
    pub misses: u64,
    pub idle: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PluginsAnswer {
    pub plugins: Vec<PluginAnswer>,
}

/// The plugins folder: name, version, world, digest, load time or error,
/// calls and errors by kind.
#[utoipa::path(get, path = "/plugins", tag = "plugins",
    responses((status = 200, body = PluginsAnswer)))]
async fn plugins(State(d): D) -> Json<PluginsAnswer> {
    let mut calls = d.metrics.plugin_calls();
    let warm = d.engine.warm_stats();
    let plugins = d
        .catalog
        .entries()
        .into_iter()
        .map(|plugin| {
            let mine: Vec<_> = warm.iter().filter(|(n, _)| *n == plugin.name).collect();
            let warm = (mine.iter().any(|(_, w)| w.hits + w.misses > 0)).then(|| WarmView {
                hits: mine.iter().map(|(_, w)| w.hits).sum(),
                misses: mine.iter().map(|(_, w)| w.misses).sum(),
                idle: mine.iter().map(|(_, w)| w.idle).sum(),
            });
            PluginAnswer {
                calls: calls.remove(&plugin.name).unwrap_or_default(),
                warm,
                plugin,
            }
        })
        .collect();
    Json(PluginsAnswer { plugins })
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MachinesAnswer {
    /// Names `POST /workflows` takes as `machine`.
    pub machines: Vec<String>,
}

/// Machines known by name (the daemon's machines folder).
#[utoipa::path(get, path = "/machines", tag = "workflows",
    responses((status = 200, body = MachinesAnswer)))]
async fn machines(State(d): D) -> Json<MachinesAnswer> {
    Json(MachinesAnswer {
        machines: d.machine_names(),
    })
}

// --------------------------------------------------------- the daemon's own

/// Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "daemon",
    responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(State(d): D) -> Result<Response, ApiError> {
    let queues: Vec<String> = d.pools.iter().map(|p| p.queue().to_string()).collect();
    let own: Vec<(String, usize)> = d
        .pools
        .iter()
        .map(|p| (p.queue().to_string(), p.view().running))
        .collect();
    let warm = d.engine.warm_stats();
    let text = d
        .metrics
        .render(d.backend.as_ref(), &queues, &own, &warm)
        .await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`; `degraded` while the store refuses the workers' claims (a full
    /// disk, a lock held elsewhere: the daemon lives, but runs nothing);
    /// `draining` while the daemon shuts down.
    pub status: String,
    /// Why it is degraded: the store's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Liveness (no token needed). A degraded store is still 200: restarting
/// the daemon would not free the disk.
#[utoipa::path(get, path = "/healthz", tag = "daemon",
    responses((status = 200, description = "Alive: `ok` or `degraded`", body = Health), (status = 503, description = "Draining", body = Health)))]
async fn healthz(State(d): D) -> (StatusCode, Json<Health>) {
    if *d.draining.borrow() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "draining".into(),
                reason: None,
            }),
        );
    }
    let reason = d.metrics.store_refusing();
    let status = if reason.is_some() { "degraded" } else { "ok" };
    (
        StatusCode::OK,
        Json(Health {
            status: status.into(),
            reason,
        }),
    )
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flowhost",
        description = "Workflows of sandboxed WebAssembly plugins: submit, watch, signal, cancel; execution state; job pools; workers.",
        license(name = "Apache-2.0")
    ),
    tags(
        (name = "workflows", description = "Executions of machines"),
        (name = "state", description = "An execution's key/value state"),
        (name = "pools", description = "Job pools"),
        (name = "workers", description = "Workers and scaling"),
        (name = "plugins", description = "The plugins folder"),
        (name = "daemon", description = "Health, metrics, this description"),
    ),
    components(schemas(ErrorBody, ErrorDetail))
)]
struct ApiDoc;

/// The OpenAPI description of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes_and_doc().1
}

fn routes_and_doc() -> (Router<Arc<Daemon>>, utoipa::openapi::OpenApi) {
    let mut doc = ApiDoc::openapi();
    if let Some(c) = doc.components.as_mut() {
        c.add_security_scheme(
            "bearer",
            utoipa::openapi::security::SecurityScheme::Http(utoipa::openapi::security::Http::new(
                utoipa::openapi::security::HttpAuthScheme::Bearer,
            )),
        );
    }
    OpenApiRouter::with_openapi(doc)
        .routes(routes!(submit, list))
        .routes(routes!(counts))
        .routes(routes!(events))
        .routes(routes!(mapreduce))
        .routes(routes!(describe))
        .routes(routes!(graph))
        .routes(routes!(history))
        .routes(routes!(cancel))
        .routes(routes!(resume))
        .routes(routes!(signal))
        .routes(routes!(children))
        .routes(routes!(get_state, put_state))
        .routes(routes!(increment))
        .routes(routes!(append))
        .routes(routes!(add))
        .routes(routes!(cas))
        .routes(routes!(push, pool_jobs))
        .routes(routes!(pools))
        .routes(routes!(pool))
        .routes(routes!(requeue))
        .routes(routes!(workers))
        .routes(routes!(scale))
        .routes(routes!(plugins))
        .routes(routes!(machines))
        .routes(routes!(metrics))
        .routes(routes!(healthz))
        .routes(routes!(session))
        .split_for_parts()
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionAnswer {
    /// Whether the daemon needs a bearer token.
    pub token_required: bool,
    /// Whether this request's token (or none, when none is needed) opens
    /// the API.
    pub authorized: bool,
}

/// Whether the token this request carries opens the API: answered without
/// the token (like `/healthz`), so a client can tell "sign in" from a
/// failure without making one.
#[utoipa::path(get, path = "/session", tag = "daemon",
    responses((status = 200, body = SessionAnswer)))]
async fn session(State(d): D, headers: HeaderMap) -> Json<SessionAnswer> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    Json(SessionAnswer {
        token_required: d.token.is_some(),
        authorized: d.token.as_ref().is_none_or(|t| t.accepts(given)),
    })
}

/// The API's router over a daemon.
pub fn router(d: Arc<Daemon>) -> Router {
    let (routes, doc) = routes_and_doc();
    let doc = Arc::new(doc);
    routes
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .route_layer(axum::middleware::from_fn_with_state(d.clone(), observe))
        .merge(super::dashboard::routes())
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(d.clone(), authorize))
        .layer(axum::extract::DefaultBodyLimit::max(d.config.body_limit))
        .with_state(d)
}

async fn unknown_route(State(d): D, req: Request) -> ApiError {
    d.metrics.http(req.method().as_str(), "unmatched", 404, 0.0);
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route {} {} (GET /openapi.json lists them)",
            req.method(),
            crate::text::escape_control(req.uri().path())
        ),
    )
}

async fn wrong_method(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not a method of {}",
            req.method(),
            crate::text::escape_control(req.uri().path())
        ),
    )
}

/// Counts each request by its route (the path's template, not its ids).
async fn observe(State(d): D, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = req.method().to_string();
    let started = std::time::Instant::now();
    let mut response = next.run(req).await;
    let took = started.elapsed().as_secs_f64();
    d.metrics
        .http(&method, &route, response.status().as_u16(), took);
    // The time the daemon spent on the request, as browsers' developer
    // tools and the dashboard benchmark read it.
    if let Ok(v) = header::HeaderValue::from_str(&format!("app;dur={:.3}", took * 1e3)) {
        response.headers_mut().insert("server-timing", v);
    }
    response
}

/// Every route but `/healthz`, `/session` and the dashboard's files needs
/// the token, when the daemon has one.
async fn authorize(State(d): D, headers: HeaderMap, req: Request, next: Next) -> Response {
    if let Some(token) = &d.token
        && !["/healthz", "/session"].contains(&req.uri().path())
        && !super::dashboard::is_public(req.uri().path())
    {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !token.accepts(given) {
            let message = if given.is_some() {
                "the bearer token is not the daemon's"
            } else {
                "this daemon needs a bearer token: Authorization: Bearer <token>"
            };
            return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
                .into_response();
        }
    }
    next.run(req).await
}
