//! The REST API: each handler translates HTTP into one `VolumeService` call
//! and back. It holds no volume logic; [`ApiError`] is the one mapping from
//! the core's error to HTTP.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ballast_core::model::{parse_size, ConsumerKind, ConsumerRef, InvalidInput};
use ballast_core::{Error, VolumeService};
use serde::Deserialize;
use utoipa::OpenApi;

use crate::api::*;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

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
}

/// An error reply: a status and the JSON body every client can read.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
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
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::Capacity { .. } => StatusCode::INSUFFICIENT_STORAGE,
            Error::Driver(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
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
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) => {
                // axum answers 422 for a well-formed body of the wrong shape
                // (an unknown field) and 415 for a missing content type; to
                // clients every one of these is a bad argument, so 400.
                let err = if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        rej.body_text(),
                    )
                } else {
                    ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", rej.body_text())
                };
                Err(err)
            }
        }
    }
}

/// Run a blocking core call off the async workers.
async fn blocking<T, F>(state: &ApiState, f: F) -> Result<T, ApiError>
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
        description = "Persistent volumes for containers: the REST API. Over the unix socket no token is needed; over TCP every call needs `Authorization: Bearer <token>` (the token is in <state-dir>/token), except read-only calls from loopback."
    ),
    paths(
        list_volumes,
        create_volume,
        get_volume,
        delete_volume,
        mount_volume,
        unmount_volume,
        resize_volume,
        list_pools,
        get_pool,
        list_events,
        version,
        openapi_document,
        create_snapshot,
        list_snapshots,
        get_snapshot,
        delete_snapshot
    ),
    components(schemas(
        CreateVolumeBody,
        MountBody,
        ResizeBody,
        VolumeView,
        PoolView,
        MountReply,
        VersionReply,
        ErrorReply,
        ErrorDetail,
        SnapshotBody,
        SnapshotView,
        ballast_core::events::Event
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
        .route("/v1/volumes/{name}/snapshots", post(create_snapshot))
        .route("/v1/snapshots", get(list_snapshots))
        .route(
            "/v1/snapshots/{name}",
            get(get_snapshot).delete(delete_snapshot),
        )
        .route("/v1/pools", get(list_pools))
        .route("/v1/pools/{name}", get(get_pool))
        .route("/v1/events", get(list_events))
        .route("/v1/version", get(version))
        .route("/openapi.json", get(openapi_document))
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
        .with_state(state)
}

/// TCP callers need the bearer token, except read-only calls from loopback.
async fn require_token(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<Peer>()
        .cloned()
        .unwrap_or(Peer::Tcp { loopback: false });
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    let allowed = match peer {
        Peer::Unix => true,
        Peer::Tcp { loopback } if loopback && read_only => true,
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[utoipa::path(get, path = "/v1/volumes", responses((status = 200, body = [VolumeView])))]
async fn list_volumes(State(state): State<ApiState>) -> Json<Vec<VolumeView>> {
    // Served from the service's in-memory records: no backend call, no lock
    // held across volumes.
    Json(
        state
            .service
            .list_volumes()
            .into_iter()
            .map(|v| VolumeView::new(v, None))
            .collect(),
    )
}

#[utoipa::path(post, path = "/v1/volumes", request_body = CreateVolumeBody,
    responses((status = 200, body = VolumeView), (status = 400, body = ErrorReply),
        (status = 409, body = ErrorReply), (status = 507, body = ErrorReply)))]
async fn create_volume(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<CreateVolumeBody>,
) -> Result<Json<VolumeView>, ApiError> {
    let req = body.into_request()?;
    let vol = blocking(&state, move |s| s.create_volume(req)).await?;
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
        Ok(VolumeView::new(v, usage))
    })
    .await?;
    Ok(Json(view))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    /// Unmount first if the volume is in use.
    #[serde(default)]
    force: bool,
}

#[utoipa::path(delete, path = "/v1/volumes/{name}", params(DeleteQuery),
    responses((status = 204), (status = 404, body = ErrorReply), (status = 409, body = ErrorReply)))]
async fn delete_volume(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    query: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", e.body_text()))?;
    blocking(&state, move |s| s.delete_volume(&name, q.force)).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn cli_consumer(body: MountBody) -> ConsumerRef {
    ConsumerRef::new(ConsumerKind::Cli, body.id.unwrap_or_default())
}

#[utoipa::path(post, path = "/v1/volumes/{name}/mount", request_body = MountBody,
    responses((status = 200, body = MountReply), (status = 404, body = ErrorReply)))]
async fn mount_volume(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<MountBody>,
) -> Result<Json<MountReply>, ApiError> {
    let consumer = cli_consumer(body);
    let vol = blocking(&state, move |s| s.mount(&name, consumer)).await?;
    let view = VolumeView::new(vol, None);
    Ok(Json(MountReply {
        mountpoint: view.mountpoint.clone().unwrap_or_default(),
        volume: view,
    }))
}

#[utoipa::path(post, path = "/v1/volumes/{name}/unmount", request_body = MountBody,
    responses((status = 200, body = VolumeView), (status = 404, body = ErrorReply), (status = 409, body = ErrorReply)))]
async fn unmount_volume(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<MountBody>,
) -> Result<Json<VolumeView>, ApiError> {
    let consumer = cli_consumer(body);
    let vol = blocking(&state, move |s| s.unmount(&name, &consumer)).await?;
    Ok(Json(VolumeView::new(vol, None)))
}

#[utoipa::path(post, path = "/v1/volumes/{name}/resize", request_body = ResizeBody,
    responses((status = 200, body = VolumeView), (status = 400, body = ErrorReply), (status = 507, body = ErrorReply)))]
async fn resize_volume(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ResizeBody>,
) -> Result<Json<VolumeView>, ApiError> {
    let size = parse_size(&body.size)?;
    let vol = blocking(&state, move |s| s.resize(&name, size)).await?;
    Ok(Json(VolumeView::new(vol, None)))
}

#[utoipa::path(get, path = "/v1/pools", responses((status = 200, body = [PoolView])))]
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
    responses((status = 200, body = PoolView), (status = 404, body = ErrorReply)))]
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// How many recent events (default 100, at most 1000).
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/events", params(EventsQuery),
    responses((status = 200, body = [ballast_core::events::Event])))]
async fn list_events(
    State(state): State<ApiState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<ballast_core::events::Event>>, ApiError> {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", e.body_text()))?;
    let limit = q.limit.unwrap_or(100).min(1000);
    Ok(Json(state.service.recent_events(limit)))
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
        (status = 409, body = ErrorReply), (status = 507, body = ErrorReply)))]
async fn create_snapshot(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SnapshotBody>,
) -> Result<Json<SnapshotView>, ApiError> {
    let snap = blocking(&state, move |s| {
        s.create_snapshot(&name, &body.name, ballast_core::Wait::Block)
    })
    .await?;
    Ok(Json(snap.into()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct SnapshotsQuery {
    /// Only snapshots of this volume.
    volume: Option<String>,
}

#[utoipa::path(get, path = "/v1/snapshots", params(SnapshotsQuery),
    responses((status = 200, body = [SnapshotView])))]
async fn list_snapshots(
    State(state): State<ApiState>,
    query: Result<Query<SnapshotsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<SnapshotView>>, ApiError> {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", e.body_text()))?;
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
    responses((status = 204), (status = 404, body = ErrorReply)))]
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
