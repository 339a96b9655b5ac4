//! The REST API: each handler translates HTTP into one `VolumeService` call
//! and back. It holds no volume logic; [`ApiError`] is the one mapping from
//! the core's error to HTTP.

use ballast_core::desired::ErrorClass;
use std::sync::Arc;

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ballast_core::model::{ConsumerKind, ConsumerRef, InvalidInput};
use ballast_core::nodes::{ClusterStatus, NodeView, Offer, OfferQuery};
use ballast_core::{Error, VolumeService, Wait};
use serde::Deserialize;
use utoipa::OpenApi;

use crate::api::*;
use crate::openapi::Common;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// Most events one list (or a stream's backlog) returns.
pub const MAX_EVENTS: usize = 1000;

/// Who is on the other end of a connection; set by the listener.
#[derive(Debug, Clone)]
pub enum Peer {
    /// The unix socket: its 0600 mode already limits it to root.
    Unix,
    Tcp {
        loopback: bool,
    },
}

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    pub service: Arc<VolumeService>,
    /// Bearer token TCP callers must present.
    pub token: Arc<String>,
    /// Each volume's view as JSON, with the revisions it was made at.
    pub views: Arc<ViewCache>,
}

impl ApiState {
    pub fn new(service: Arc<VolumeService>, token: String) -> Self {
        ApiState {
            service,
            token: Arc::new(token),
            views: Arc::default(),
        }
    }
}

/// `GET /v1/volumes` at 30,000 volumes spent most of its time cloning and
/// serialising views that had not changed: each is serialised once per
/// change of its records, and a listing joins the bytes.
#[derive(Default)]
pub struct ViewCache {
    views: std::sync::Mutex<std::collections::HashMap<String, CachedView>>,
}

/// A view's JSON and the revisions of the records it was made from.
type CachedView = ((u64, u64), bytes::Bytes);

impl ViewCache {
    /// The JSON array of every volume's view.
    fn list(&self, service: &VolumeService) -> Vec<u8> {
        let mut cache = self.views.lock().unwrap_or_else(|e| e.into_inner());
        let parts = service.map_volumes_versioned(|v, version| match cache.get(&v.name) {
            Some((seen, bytes)) if *seen == version && version != (0, 0) => bytes.clone(),
            _ => {
                let bytes = bytes::Bytes::from(
                    serde_json::to_vec(&VolumeView::new(v.clone(), None)).expect("views serialise"),
                );
                cache.insert(v.name.clone(), (version, bytes.clone()));
                bytes
            }
        });
        // Volumes gone since: dropped once the cache holds many of them.
        if cache.len() > parts.len() * 2 + 64 {
            let live: std::collections::HashSet<String> =
                service.list_volumes().into_iter().map(|v| v.name).collect();
            cache.retain(|name, _| live.contains(name));
        }
        drop(cache);
        let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + 2);
        out.push(b'[');
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(p);
        }
        out.push(b']');
        out
    }
}

/// An error reply: a status and the JSON body every client can read.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::AlreadyExists { .. } => StatusCode::CONFLICT,
            Error::InUse { .. } => StatusCode::CONFLICT,
            Error::Busy { .. } => StatusCode::CONFLICT,
            Error::Conflict { .. } | Error::OtherNode { .. } => StatusCode::CONFLICT,
            Error::Capacity { .. } => StatusCode::INSUFFICIENT_STORAGE,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
            Error::Driver(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Unplaceable { .. } => StatusCode::CONFLICT,
            Error::Remote(r) => match r.class {
                ErrorClass::InvalidArgument => StatusCode::BAD_REQUEST,
                ErrorClass::NotFound => StatusCode::NOT_FOUND,
                ErrorClass::AlreadyExists | ErrorClass::FailedPrecondition => StatusCode::CONFLICT,
                ErrorClass::Capacity => StatusCode::INSUFFICIENT_STORAGE,
                ErrorClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                ErrorClass::Failed => StatusCode::INTERNAL_SERVER_ERROR,
            },
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<InvalidInput> for ApiError {
    fn from(e: InvalidInput) -> Self {
        Error::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorReply {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// `Json` whose rejections (malformed, unknown field, too large) are JSON
/// errors like every other.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", m);
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            .is_some_and(|m| m == "application/json" || m.ends_with("+json"));
        if !json_type {
            return Err(bad(
                "Expected request with `Content-Type: application/json`".into(),
            ));
        }
        let bytes = match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    rej.body_text(),
                ))
            }
            Err(rej) => return Err(bad(rej.body_text())),
        };
        // Every body is an object: serde would take a struct from an array
        // of its fields too, which the document does not allow.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(bad("the body must be a JSON object".into()));
        }
        // axum's own decoding names the field at fault and refuses
        // duplicate fields; its 422 for a wrong shape is a 400 here, like
        // every bad argument.
        Json::<T>::from_bytes(&bytes)
            .map(|Json(v)| ApiJson(v))
            .map_err(|rej| bad(rej.body_text()))
    }
}

/// Run a blocking core call off the async workers.
pub(crate) async fn blocking<T, F>(state: &ApiState, f: F) -> Result<T, ApiError>
where
    F: FnOnce(&VolumeService) -> ballast_core::Result<T> + Send + 'static,
    T: Send + 'static,
{
    crate::run_blocking(&state.service, f)
        .await
        .map_err(ApiError::from)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ballast",
        description = "Persistent volumes for containers: the REST API. Over the unix socket no token is needed; over TCP every call needs `Authorization: Bearer <token>` (the token is in <state-dir>/token), except read-only calls from loopback that name a loopback host (localhost, 127.0.0.1, [::1]) in their Host header."
    ),
    modifiers(&Common),
    paths(
        list_volumes,
        create_volume,
        get_volume,
        delete_volume,
        mount_volume,
        unmount_volume,
        resize_volume,
        move_volume,
        get_move,
        cancel_move,
        list_moves,
        crate::backups::add_target,
        crate::backups::list_targets,
        crate::backups::remove_target,
        crate::backups::create_backup,
        crate::backups::list_runs,
        crate::backups::get_run,
        crate::backups::list_backups,
        crate::backups::get_backup,
        crate::backups::delete_backup,
        crate::backups::restore_backup,
        crate::backups::set_schedule,
        crate::backups::remove_schedule,
        crate::backups::list_schedules,
        list_pools,
        list_nodes,
        get_node,
        cordon_node,
        uncordon_node,
        list_offers,
        cluster_status,
        create_pool,
        get_pool,
        delete_pool,
        list_events,
        stream_events,
        list_operations,
        version,
        openapi_document,
        crate::metrics::serve_metrics,
        create_snapshot,
        list_snapshots,
        get_snapshot,
        delete_snapshot,
        list_claims,
        acquire_claim,
        renew_claim,
        release_claim
    ),
    components(schemas(
        CreateVolumeBody,
        MountBody,
        ResizeBody,
        MoveBody,
        MoveView,
        crate::backups::TargetBody,
        crate::backups::BackupBody,
        crate::backups::RestoreBody,
        crate::backups::ScheduleBody,
        ballast_core::backups::BackupTarget,
        ballast_core::backups::BackupRecord,
        ballast_core::backups::BackupInfo,
        ballast_core::backups::BackupSchedule,
        ballast_core::backups::GcStats,
        VolumeView,
        PoolView,
        CreatePoolBody,
        MountReply,
        VersionReply,
        ErrorReply,
        ErrorDetail,
        SnapshotBody,
        SnapshotView,
        AcquireClaimBody,
        RenewClaimBody,
        ReleaseClaimBody,
        ClaimView,
        ClaimStatusView,
        ballast_core::events::Event,
        ballast_core::progress::Operation
    ))
)]
pub struct ApiDoc;

/// The OpenAPI document, as served at /openapi.json and kept in the repo.
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.to_pretty_json().expect("openapi serialises") + "\n"
}

/// The API router. `require_token` guards it for TCP listeners.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/volumes", get(list_volumes).post(create_volume))
        .route("/v1/volumes/{name}", get(get_volume).delete(delete_volume))
        .route("/v1/volumes/{name}/mount", post(mount_volume))
        .route("/v1/volumes/{name}/unmount", post(unmount_volume))
        .route("/v1/volumes/{name}/resize", post(resize_volume))
        .route(
            "/v1/volumes/{name}/move",
            get(get_move).post(move_volume).delete(cancel_move),
        )
        .route("/v1/moves", get(list_moves))
        .merge(crate::backups::routes())
        .route("/v1/volumes/{name}/snapshots", post(create_snapshot))
        .route("/v1/snapshots", get(list_snapshots))
        .route(
            "/v1/snapshots/{name}",
            get(get_snapshot).delete(delete_snapshot),
        )
        .route("/v1/claims", get(list_claims))
        .route("/v1/claims/{group}/acquire", post(acquire_claim))
        .route("/v1/claims/{group}/{ordinal}/renew", post(renew_claim))
        .route("/v1/claims/{group}/{ordinal}/release", post(release_claim))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{id}", get(get_node))
        .route("/v1/nodes/{id}/cordon", post(cordon_node))
        .route("/v1/nodes/{id}/uncordon", post(uncordon_node))
        .route("/v1/offers", get(list_offers))
        .route("/v1/cluster", get(cluster_status))
        .route("/v1/pools", get(list_pools).post(create_pool))
        .route("/v1/pools/{name}", get(get_pool).delete(delete_pool))
        .route("/v1/events", get(list_events))
        .route("/v1/events/stream", get(stream_events))
        .route("/v1/operations", get(list_operations))
        .route("/v1/version", get(version))
        .route("/openapi.json", get(openapi_document))
        .route("/metrics", get(crate::metrics::serve_metrics))
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method (see the Allow header)",
            )
        })
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .layer(axum::middleware::from_fn(refuse_declared_large_body))
        // The dashboard's static assets, outside the token layer: they hold
        // no data, and the page reads the API under its token rule.
        .merge(crate::dashboard::router())
        .with_state(state)
}

/// Whether the request's Host names a loopback address (or has none). A
/// web page that an attacker's name rebinds to 127.0.0.1 still sends the
/// attacker's name, so a loopback peer alone does not prove a local caller.
fn names_loopback(req: &Request) -> bool {
    // HTTP/1.1 names the host in Host; HTTP/2 in the URI's authority.
    let host = match req.headers().get(header::HOST) {
        Some(h) => match h.to_str() {
            Ok(h) => h.to_string(),
            Err(_) => return false,
        },
        None => match req.uri().authority() {
            Some(a) => a.as_str().to_string(),
            // Neither (an HTTP/1.0 client): nothing a browser would send.
            None => return true,
        },
    };
    is_loopback_host(&host)
}

/// `localhost`, `127.0.0.1`, `[::1]`, `::1`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let ip_loopback = |s: &str| {
        s.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
    };
    if ip_loopback(host) {
        return true;
    }
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map(|(ip, _)| ip).unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    name.eq_ignore_ascii_case("localhost") || ip_loopback(name)
}

/// TCP callers need the bearer token, except read-only calls from loopback
/// that name a loopback host.
async fn require_token(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<Peer>()
        .cloned()
        .unwrap_or(Peer::Tcp { loopback: false });
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    let allowed = match peer {
        Peer::Unix => true,
        Peer::Tcp { loopback } if loopback && read_only && names_loopback(&req) => true,
        Peer::Tcp { .. } => {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            presented.is_some_and(|t| constant_time_eq(t.as_bytes(), state.token.as_bytes()))
        }
    };
    if allowed {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a bearer token is required (see <state-dir>/token)",
        )
        .into_response()
    }
}

/// A body declared larger than the limit is refused before any of it is
/// read: the client learns at once, and nothing waits for bytes that would
/// be thrown away.
async fn refuse_declared_large_body(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        let mut resp = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {MAX_BODY} bytes"),
        )
        .into_response();
        // The unread body makes the connection unusable for another request.
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return resp;
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[utoipa::path(get, path = "/v1/volumes", responses((status = 200, body = [VolumeView])))]
async fn list_volumes(State(state): State<ApiState>) -> Response {
    // Served from the service's in-memory records (no backend call, no
    // per-volume lock) and the views serialised before.
    let body = state.views.list(&state.service);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[utoipa::path(post, path = "/v1/volumes", request_body = CreateVolumeBody,
    responses((status = 200, body = VolumeView), (status = 400, body = ErrorReply),
        (status = 404, description = "No such pool, source volume or snapshot", body = ErrorReply),
        (status = 409, description = "The name is taken, or the source is busy", body = ErrorReply),
        (status = 500, body = ErrorReply),
        (status = 507, description = "The pool cannot hold the volume", body = ErrorReply)))]
async fn create_volume(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateVolumeBody>,
) -> Result<Json<VolumeView>, ApiError> {
    let (req, placement) = body.into_request()?;
    let vol = blocking(&state, move |s| {
        s.create_volume_placed(req, placement, Wait::Block)
    })
    .await?;
    Ok(Json(VolumeView::new(vol, None)))
}

#[utoipa::path(get, path = "/v1/volumes/{name}",
    responses((status = 200, body = VolumeView), (status = 404, body = ErrorReply)))]
async fn get_volume(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<VolumeView>, ApiError> {
    let view = blocking(&state, move |s| {
        let v = s.get_volume(&name)?;
        let usage = s.volume_usage(&v);
        let holders = match v.node {
            None => s.holders(&name)?,
            Some(_) => Vec::new(),
        };
        let mut view = VolumeView::new(v, usage);
        view.holders = holders;
        Ok(view)
    })
    .await?;
    Ok(Json(view))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    /// Unmount first if the volume is in use.
    #[serde(default)]
    force: bool,
}

#[utoipa::path(delete, path = "/v1/volumes/{name}", params(DeleteQuery),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorReply),
        (status = 409, description = "In use (without force), or busy", body = ErrorReply),
        (status = 500, body = ErrorReply)))]
async fn delete_volume(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    query: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", e.body_text()))?;
    blocking(&state, move |s| {
        s.delete_volume_anywhere(&name, q.force, Wait::Block)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn cli_consumer(body: MountBody) -> Result<ConsumerRef, ApiError> {
    Ok(ConsumerRef::new(ConsumerKind::Cli, body.into_id()?))
}

#[utoipa::path(post, path = "/v1/volumes/{name}/mount", request_body = MountBody,
    responses((status = 200, body = MountReply), (status = 404, body = ErrorReply),
        (status = 409, description = "Busy", body = ErrorReply), (status = 500, body = ErrorReply)))]
async fn mount_volume(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<MountBody>,
) -> Result<Json<MountReply>, ApiError> {
    let preempt = body.preempt;
    let consumer = cli_consumer(body)?;
    let vol = blocking(&state, move |s| {
        if preempt {
            s.publish_preempt(
                &name,
                consumer,
                None,
                ballast_core::model::Sharing::Unspecified,
                Wait::Block,
            )
        } else {
            s.mount(&name, consumer)
        }
    })
    .await?;
    let view = VolumeView::new(vol, None);
    Ok(Json(MountReply {
        mountpoint: view.mountpoint.clone().unwrap_or_default(),
        volume: view,
    }))
}

#[utoipa::path(post, path = "/v1/volumes/{name}/unmount", request_body = MountBody,
    responses((status = 200, body = VolumeView), (status = 404, body = ErrorReply),
        (status = 409, description = "Busy", body = ErrorReply), (status = 500, body = ErrorReply)))]
async fn unmount_volume(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<MountBody>,
) -> Result<Json<VolumeView>, ApiError> {
    if body.preempt {
        return Err(InvalidInput::new("preempt", "applies to mount only").into());
    }
    let consumer = cli_consumer(body)?;
    let vol = blocking(&state, move |s| s.unmount(&name, &consumer)).await?;
    Ok(Json(VolumeView::new(vol, None)))
}

#[utoipa::path(post, path = "/v1/volumes/{name}/resize", request_body = ResizeBody,
    responses((status = 200, body = VolumeView), (status = 400, body = ErrorReply),
        (status = 404, body = ErrorReply), (status = 409, description = "Busy", body = ErrorReply),
        (status = 500, body = ErrorReply),
        (status = 507, description = "The pool cannot hold the new size", body = ErrorReply)))]
async fn resize_volume(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ResizeBody>,
) -> Result<Json<VolumeView>, ApiError> {
    let size = body.into_size()?;
    let vol = blocking(&state, move |s| s.resize_anywhere(&name, size, Wait::Block)).await?;
    Ok(Json(VolumeView::new(vol, None)))
}

/// Move a loop or btrfs volume to another node or pool. Answers at once
/// (202) with the move, which the volume's node carries out: first pass
/// while in use, then the final pass with the volume held (`moving`), then
/// the switch once the target verified every checksum. Follow it with GET.
#[utoipa::path(post, path = "/v1/volumes/{name}/move", request_body = MoveBody,
    responses((status = 202, body = MoveView), (status = 400, body = ErrorReply),
        (status = 404, body = ErrorReply), (status = 409, description = "Busy", body = ErrorReply),
        (status = 503, body = ErrorReply),
        (status = 507, description = "The target pool cannot hold it", body = ErrorReply)))]
async fn move_volume(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<MoveBody>,
) -> Result<(StatusCode, Json<MoveView>), ApiError> {
    let req = ballast_core::service::MoveRequest {
        to_node: body.to,
        to_pool: body.pool,
        wait_idle: body.wait_idle,
    };
    let rec = blocking(&state, move |s| s.request_move(&name, &req)).await?;
    Ok((StatusCode::ACCEPTED, Json(rec.into())))
}

/// The volume's move: in flight, committed (the source still cleans up),
/// or failed (with why). 404 when there is none.
#[utoipa::path(get, path = "/v1/volumes/{name}/move",
    responses((status = 200, body = MoveView), (status = 404, body = ErrorReply)))]
async fn get_move(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<MoveView>, ApiError> {
    Ok(Json(state.service.get_move(&name)?.into()))
}

/// Stop a move in flight; the source rolls it back. A move that already
/// switched the volume is 409.
#[utoipa::path(delete, path = "/v1/volumes/{name}/move",
    responses((status = 200, body = MoveView), (status = 404, body = ErrorReply),
        (status = 409, body = ErrorReply)))]
async fn cancel_move(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<MoveView>, ApiError> {
    let rec = blocking(&state, move |s| s.cancel_move(&name)).await?;
    Ok(Json(rec.into()))
}

#[utoipa::path(get, path = "/v1/moves", responses((status = 200, body = [MoveView])))]
async fn list_moves(State(state): State<ApiState>) -> Json<Vec<MoveView>> {
    Json(
        state
            .service
            .list_moves()
            .into_iter()
            .map(Into::into)
            .collect(),
    )
}

/// Every node the store knows: ready (its lease is alive) or unreachable
/// (named by pools or volumes, lease lapsed), with its own record while
/// ready. Served from the cache.
#[utoipa::path(get, path = "/v1/nodes", responses((status = 200, body = [NodeView])))]
async fn list_nodes(State(state): State<ApiState>) -> Json<Vec<NodeView>> {
    Json(state.service.list_nodes())
}

#[utoipa::path(get, path = "/v1/nodes/{id}",
    responses((status = 200, body = NodeView), (status = 404, body = ErrorReply)))]
async fn get_node(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    Ok(Json(state.service.get_node(&id)?))
}

/// Place no new volumes on the node (from any node); what lives there stays
/// and works. Repeating it is a no-op.
#[utoipa::path(post, path = "/v1/nodes/{id}/cordon",
    responses((status = 200, body = NodeView), (status = 404, body = ErrorReply),
        (status = 409, body = ErrorReply), (status = 503, body = ErrorReply)))]
async fn cordon_node(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    Ok(Json(
        blocking(&state, move |s| s.set_cordon(&id, true)).await?,
    ))
}

#[utoipa::path(post, path = "/v1/nodes/{id}/uncordon",
    responses((status = 200, body = NodeView), (status = 404, body = ErrorReply),
        (status = 409, body = ErrorReply), (status = 503, body = ErrorReply)))]
async fn uncordon_node(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    Ok(Json(
        blocking(&state, move |s| s.set_cordon(&id, false)).await?,
    ))
}

/// The elected controller (one node at a time, taken under its lease) and
/// how many nodes are ready, unreachable and cordoned. From the cache.
#[utoipa::path(get, path = "/v1/cluster", responses((status = 200, body = ClusterStatus)))]
async fn cluster_status(State(state): State<ApiState>) -> Json<ClusterStatus> {
    Json(state.service.cluster_status())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct OffersQuery {
    /// The volume's size: `64M`, `10G`.
    size: String,
    /// `ext4` or `xfs`: only pools whose volumes have that filesystem.
    fs: Option<String>,
    /// A raw block volume: only pools with block devices.
    block: Option<bool>,
    /// Node labels that must all match: `zone=a,rack=r1`.
    selector: Option<String>,
}

/// Where a volume of this shape could go now: every pool on a ready,
/// uncordoned node matching the selector that can back it, with what it can
/// still admit, most room first.
#[utoipa::path(get, path = "/v1/offers", params(OffersQuery),
    responses((status = 200, body = [Offer]), (status = 400, body = ErrorReply)))]
async fn list_offers(
    State(state): State<ApiState>,
    query: Result<Query<OffersQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Offer>>, ApiError> {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", e.body_text()))?;
    crate::wire::check_size("size", &q.size)?;
    let query = OfferQuery {
        size_bytes: ballast_core::model::parse_size(&q.size)?,
        fs: q
            .fs
            .as_deref()
            .map(str::parse::<ballast_core::model::FsType>)
            .transpose()?,
        block: q.block.unwrap_or(false),
        selector: ballast_core::nodes::parse_selector(q.selector.as_deref().unwrap_or(""))?,
    };
    Ok(Json(blocking(&state, move |s| s.offers(&query)).await?))
}

#[utoipa::path(get, path = "/v1/pools", responses((status = 200, body = [PoolView]),
    (status = 500, body = ErrorReply)))]
async fn list_pools(State(state): State<ApiState>) -> Result<Json<Vec<PoolView>>, ApiError> {
    let pools = blocking(&state, |s| {
        let vols = s.list_volumes();
        s.list_pools()
            .into_iter()
            .map(|p| {
                let cap = s.pool_capacity(&p)?;
                let n = vols.iter().filter(|v| v.pool == p.name).count();
                Ok(PoolView::new(p, cap, n))
            })
            .collect()
    })
    .await?;
    Ok(Json(pools))
}

#[utoipa::path(get, path = "/v1/pools/{name}",
    responses((status = 200, body = PoolView), (status = 404, body = ErrorReply),
        (status = 500, body = ErrorReply)))]
async fn get_pool(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<PoolView>, ApiError> {
    let pool = blocking(&state, move |s| {
        let p = s.get_pool(&name)?;
        let cap = s.pool_capacity(&p)?;
        let n = s.list_volumes().iter().filter(|v| v.pool == p.name).count();
        Ok(PoolView::new(p, cap, n))
    })
    .await?;
    Ok(Json(pool))
}

/// Make a pool: btrfs on disks or a disk file (or an adopted btrfs mount),
/// or a loop or dir pool on a directory. The same request again returns the
/// same pool.
#[utoipa::path(post, path = "/v1/pools", request_body = CreatePoolBody,
    responses((status = 200, body = PoolView), (status = 400, body = ErrorReply),
        (status = 409, description = "The name is taken by another pool, or a disk is in use", body = ErrorReply),
        (status = 500, body = ErrorReply)))]
async fn create_pool(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreatePoolBody>,
) -> Result<Json<PoolView>, ApiError> {
    let req = body.into_request()?;
    let view = blocking(&state, move |s| {
        let p = s.create_pool(req)?;
        let cap = s.pool_capacity(&p)?;
        Ok(PoolView::new(p, cap, 0))
    })
    .await?;
    Ok(Json(view))
}

/// Delete an empty pool. A btrfs pool ballast made is unmounted and its disk
/// files removed; an adopted btrfs or a directory is only forgotten.
#[utoipa::path(delete, path = "/v1/pools/{name}",
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorReply),
        (status = 409, description = "The pool holds volumes or snapshots", body = ErrorReply),
        (status = 500, body = ErrorReply)))]
async fn delete_pool(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    blocking(&state, move |s| s.delete_pool(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// How many recent events (default 100 for a list, 20 for a stream's
    /// backlog; at most 1000).
    limit: Option<usize>,
}

/// Parse a query, and refuse a limit past [`MAX_EVENTS`].
fn events_query(
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<EventsQuery, ApiError> {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", e.body_text()))?;
    if q.limit.is_some_and(|l| l > MAX_EVENTS) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!("limit: must be from 0 to {MAX_EVENTS}"),
        ));
    }
    Ok(q)
}

#[utoipa::path(get, path = "/v1/events", params(EventsQuery),
    responses((status = 200, body = [ballast_core::events::Event])))]
async fn list_events(
    State(state): State<ApiState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<ballast_core::events::Event>>, ApiError> {
    let q = events_query(query)?;
    let limit = q.limit.unwrap_or(100);
    Ok(Json(state.service.recent_events(limit)))
}

/// Events as they happen, as Server-Sent Events: first the recent ones
/// (`limit`, default 20), then each new one. Each SSE message's `event` is
/// the event's kind and its `data` the event as JSON.
#[utoipa::path(get, path = "/v1/events/stream", params(EventsQuery),
    responses((status = 200, description = "text/event-stream of Event objects", content_type = "text/event-stream")))]
async fn stream_events(
    State(state): State<ApiState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<
    axum::response::sse::Sse<
        impl tokio_stream::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
    >,
    ApiError,
> {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    use tokio_stream::StreamExt;
    let q = events_query(query)?;
    // Subscribe before reading the backlog, so nothing falls in between;
    // live events already in the backlog are skipped by sequence number.
    let live = state.service.subscribe_events();
    let backlog = state.service.recent_events(q.limit.unwrap_or(20));
    let last = backlog.last().map_or(0, |e| e.seq);
    let to_sse = |e: &ballast_core::events::Event| {
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        SseEvent::default()
            .event(kind)
            .id(e.seq.to_string())
            .json_data(e)
            .unwrap_or_default()
    };
    let head = tokio_stream::iter(backlog.iter().map(to_sse).collect::<Vec<_>>());
    let tail = tokio_stream::wrappers::BroadcastStream::new(live).filter_map(move |r| match r {
        Ok(e) if e.seq > last => Some(to_sse(&e)),
        Ok(_) => None,
        // A slow reader missed events: say so rather than hide it.
        Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => Some(
            SseEvent::default()
                .event("lagged")
                .data(format!("{n} events were dropped for this slow reader")),
        ),
    });
    Ok(Sse::new(head.chain(tail).map(Ok)).keep_alive(KeepAlive::default()))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json",
    responses((status = 200, description = "The OpenAPI document of this API", content_type = "application/json")))]
async fn openapi_document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json())
}

#[utoipa::path(get, path = "/v1/version", responses((status = 200, body = VersionReply)))]
async fn version() -> Json<VersionReply> {
    Json(VersionReply {
        version: env!("CARGO_PKG_VERSION").to_string(),
        api: "v1".to_string(),
    })
}

#[utoipa::path(post, path = "/v1/volumes/{name}/snapshots", request_body = SnapshotBody,
    responses((status = 200, body = SnapshotView), (status = 404, body = ErrorReply),
        (status = 409, description = "The snapshot name is taken, or the volume is busy", body = ErrorReply),
        (status = 500, body = ErrorReply),
        (status = 507, description = "The pool cannot hold the snapshot", body = ErrorReply)))]
async fn create_snapshot(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SnapshotBody>,
) -> Result<Json<SnapshotView>, ApiError> {
    let snap_name = body.into_name()?;
    let snap = blocking(&state, move |s| {
        s.create_snapshot(&name, &snap_name, ballast_core::Wait::Block)
    })
    .await?;
    Ok(Json(snap.into()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SnapshotsQuery {
    /// Only snapshots of this volume.
    volume: Option<String>,
}

/// Long operations in flight (full copies for snapshots and clones, moves)
/// and how many bytes each has moved, at what rate and with what ETA: what
/// the CLI and the dashboard draw their progress bars from. An operation is
/// listed from its start until its own call returns (a move: until it is
/// committed or rolled back).
#[utoipa::path(get, path = "/v1/operations",
    responses((status = 200, body = [ballast_core::progress::Operation])))]
async fn list_operations(
    State(state): State<ApiState>,
) -> Json<Vec<ballast_core::progress::Operation>> {
    Json(state.service.operations())
}

#[utoipa::path(get, path = "/v1/snapshots", params(SnapshotsQuery),
    responses((status = 200, body = [SnapshotView])))]
async fn list_snapshots(
    State(state): State<ApiState>,
    query: Result<Query<SnapshotsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<SnapshotView>>, ApiError> {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", e.body_text()))?;
    if let Some(v) = &q.volume {
        ballast_core::model::validate_name("volume", v)?;
    }
    Ok(Json(
        state
            .service
            .list_snapshots()
            .into_iter()
            .filter(|s| q.volume.as_ref().is_none_or(|v| &s.source_volume == v))
            .map(SnapshotView::from)
            .collect(),
    ))
}

#[utoipa::path(get, path = "/v1/snapshots/{name}",
    responses((status = 200, body = SnapshotView), (status = 404, body = ErrorReply)))]
async fn get_snapshot(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<SnapshotView>, ApiError> {
    Ok(Json(state.service.get_snapshot(&name)?.into()))
}

#[utoipa::path(delete, path = "/v1/snapshots/{name}",
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorReply),
        (status = 409, description = "Busy", body = ErrorReply), (status = 500, body = ErrorReply)))]
async fn delete_snapshot(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    blocking(&state, move |s| {
        s.delete_snapshot(&name, ballast_core::Wait::Block)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ClaimsQuery {
    /// Only claims of this group.
    group: Option<String>,
}

/// Claims, of one group or all, in group and ordinal order; expired ones
/// are listed (with `expired: true`) until their ordinal is taken again.
#[utoipa::path(get, path = "/v1/claims", params(ClaimsQuery),
    responses((status = 200, body = [ClaimStatusView]), (status = 400, body = ErrorReply),
        (status = 500, body = ErrorReply)))]
async fn list_claims(
    State(state): State<ApiState>,
    query: Result<Query<ClaimsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<ClaimStatusView>>, ApiError> {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", e.body_text()))?;
    let claims = blocking(&state, move |s| s.list_claims(q.group.as_deref())).await?;
    Ok(Json(
        claims.into_iter().map(ClaimStatusView::from).collect(),
    ))
}

/// Take the group's lowest free ordinal (from 1; one never held, released
/// or expired) and create its volumes `GROUP-N-VOLUME` unless they exist.
#[utoipa::path(post, path = "/v1/claims/{group}/acquire", request_body = AcquireClaimBody,
    responses((status = 200, body = ClaimView), (status = 400, body = ErrorReply),
        (status = 404, description = "No such pool", body = ErrorReply),
        (status = 409, description = "A volume of the claim is busy, or every ordinal is held", body = ErrorReply),
        (status = 500, body = ErrorReply),
        (status = 507, description = "The pool cannot hold the claim's volumes", body = ErrorReply)))]
async fn acquire_claim(
    State(state): State<ApiState>,
    Path(group): Path<String>,
    ApiJson(body): ApiJson<AcquireClaimBody>,
) -> Result<Json<ClaimView>, ApiError> {
    let req = body.into_request(group)?;
    let claim = blocking(&state, move |s| s.acquire_claim(req)).await?;
    Ok(Json(ClaimView::placed(claim, &state.service)))
}

/// Extend a claim by its TTL (or a new one). 404: no such claim; 409: it is
/// held by another holder (named in the message).
#[utoipa::path(post, path = "/v1/claims/{group}/{ordinal}/renew", request_body = RenewClaimBody,
    responses((status = 200, body = ClaimView), (status = 400, body = ErrorReply),
        (status = 404, body = ErrorReply), (status = 409, body = ErrorReply),
        (status = 500, body = ErrorReply)))]
async fn renew_claim(
    State(state): State<ApiState>,
    Path((group, ordinal)): Path<(String, String)>,
    ApiJson(body): ApiJson<RenewClaimBody>,
) -> Result<Json<ClaimView>, ApiError> {
    let ordinal = ballast_core::claims::parse_ordinal(&ordinal)?;
    let (holder, ttl) = body.into_parts()?;
    let claim = blocking(&state, move |s| {
        s.renew_claim(&group, ordinal, &holder, ttl)
    })
    .await?;
    Ok(Json(ClaimView::placed(claim, &state.service)))
}

/// Give a claim back; its volumes stay, with their data, for the ordinal's
/// next holder. Replies with the claim as it was.
#[utoipa::path(post, path = "/v1/claims/{group}/{ordinal}/release", request_body = ReleaseClaimBody,
    responses((status = 200, body = ClaimView), (status = 400, body = ErrorReply),
        (status = 404, body = ErrorReply), (status = 409, body = ErrorReply),
        (status = 500, body = ErrorReply)))]
async fn release_claim(
    State(state): State<ApiState>,
    Path((group, ordinal)): Path<(String, String)>,
    ApiJson(body): ApiJson<ReleaseClaimBody>,
) -> Result<Json<ClaimView>, ApiError> {
    let ordinal = ballast_core::claims::parse_ordinal(&ordinal)?;
    let holder = body.into_holder()?;
    let claim = blocking(&state, move |s| s.release_claim(&group, ordinal, &holder)).await?;
    Ok(Json(ClaimView::placed(claim, &state.service)))
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "LocalHost:7420",
            "127.0.0.1",
            "127.0.0.1:7420",
            "127.9.9.9:1",
            "[::1]",
            "[::1]:7420",
            "::1",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "",
            "attacker.example",
            "attacker.example:7420",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:7420",
            "[::2]:7420",
            "[::1",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
