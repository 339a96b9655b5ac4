//! REST routes of backups: targets, runs, the backups a target holds,
//! restores and schedules. Each handler is one core call.

use std::path::PathBuf;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use ballast_core::backups::{
    parse_interval, BackupInfo, BackupRecord, BackupSchedule, BackupTarget, GcStats, TargetLocation,
};
use ballast_core::model::{validate_name, InvalidInput};
use ballast_core::service::{BackupRequest, RestoreRequest};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::{ErrorReply, VolumeView};
use crate::rest::{blocking, ApiError, ApiJson, ApiState};

/// Body of `POST /v1/backup-targets`: `s3_url` and `bucket`, or `path`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetBody {
    pub name: String,
    #[serde(default)]
    pub s3_url: Option<String>,
    #[serde(default)]
    pub bucket: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub access_key: Option<String>,
    #[serde(default)]
    pub secret_key: Option<String>,
    /// A directory target (absolute).
    #[serde(default)]
    pub path: Option<String>,
}

impl TargetBody {
    fn into_location(self) -> Result<(String, TargetLocation), InvalidInput> {
        let loc = match (self.s3_url, self.path) {
            (Some(url), None) => TargetLocation::S3 {
                url,
                bucket: self
                    .bucket
                    .ok_or_else(|| InvalidInput::new("bucket", "an s3 target needs one"))?,
                region: self.region,
                access_key: self.access_key,
                secret_key: self.secret_key,
            },
            (None, Some(dir)) => {
                if self.bucket.is_some()
                    || self.region.is_some()
                    || self.access_key.is_some()
                    || self.secret_key.is_some()
                {
                    return Err(InvalidInput::new(
                        "path",
                        "a directory target takes no bucket, region or keys",
                    ));
                }
                TargetLocation::Path {
                    dir: PathBuf::from(dir),
                }
            }
            _ => {
                return Err(InvalidInput::new(
                    "target",
                    "give either s3_url (with bucket) or path",
                ))
            }
        };
        Ok((self.name, loc))
    }
}

/// Body of `POST /v1/volumes/{name}/backups`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupBody {
    #[serde(default)]
    pub target: Option<String>,
    /// The run fails past this, e.g. `30m` (default 6h).
    #[serde(default)]
    pub deadline: Option<String>,
}

/// Body of `POST /v1/backups/{id}/restore`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    /// The new volume's name.
    pub to: String,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub pool: Option<String>,
}

/// Body of `PUT /v1/volumes/{name}/backup-schedule`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    #[serde(default)]
    pub target: Option<String>,
    /// e.g. `1h`.
    pub every: String,
    /// How many of its scheduled backups to keep.
    pub keep: u32,
    /// Each run's deadline (default: `every`).
    #[serde(default)]
    pub deadline: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackupsQuery {
    /// Only this target.
    target: Option<String>,
    /// Only backups of this volume.
    volume: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct TargetQuery {
    /// The target holding it (default: every target is searched).
    target: Option<String>,
}

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

fn query<T>(q: QueryResult<T>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", e.body_text()))
}

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/backup-targets", get(list_targets).post(add_target))
        .route("/v1/backup-targets/{name}", delete(remove_target))
        .route("/v1/volumes/{name}/backups", post(create_backup))
        .route(
            "/v1/volumes/{name}/backup-schedule",
            axum::routing::put(set_schedule).delete(remove_schedule),
        )
        .route("/v1/backup-schedules", get(list_schedules))
        .route("/v1/backup-runs", get(list_runs))
        .route("/v1/backup-runs/{id}", get(get_run))
        .route("/v1/backups", get(list_backups))
        .route("/v1/backups/{id}", get(get_backup).delete(delete_backup))
        .route("/v1/backups/{id}/restore", post(restore_backup))
}

/// Add a backup target: it is reached and listed first, so bad
/// credentials or a missing bucket fail here and nothing is kept.
#[utoipa::path(post, path = "/v1/backup-targets", request_body = TargetBody,
    responses((status = 201, body = BackupTarget), (status = 400, body = ErrorReply),
        (status = 404, description = "No such bucket or directory", body = ErrorReply),
        (status = 409, body = ErrorReply), (status = 503, body = ErrorReply)))]
pub(crate) async fn add_target(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<TargetBody>,
) -> Result<(StatusCode, Json<BackupTarget>), ApiError> {
    let (name, loc) = body.into_location()?;
    let t = blocking(&state, move |s| s.add_backup_target(&name, loc)).await?;
    Ok((StatusCode::CREATED, Json(t)))
}

/// The targets (secret keys are never shown).
#[utoipa::path(get, path = "/v1/backup-targets", responses((status = 200, body = [BackupTarget])))]
pub(crate) async fn list_targets(
    State(state): State<ApiState>,
) -> Result<Json<Vec<BackupTarget>>, ApiError> {
    Ok(Json(blocking(&state, |s| s.list_backup_targets()).await?))
}

/// Forget a target; its backups stay on it.
#[utoipa::path(delete, path = "/v1/backup-targets/{name}",
    responses((status = 204, description = "Removed"), (status = 404, body = ErrorReply),
        (status = 409, body = ErrorReply)))]
pub(crate) async fn remove_target(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    blocking(&state, move |s| s.remove_backup_target(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Back a volume up. Answers at once (202) with the run, which the
/// volume's node carries out; follow it at `/v1/backup-runs/{id}`.
#[utoipa::path(post, path = "/v1/volumes/{name}/backups", request_body = BackupBody,
    responses((status = 202, body = BackupRecord), (status = 400, body = ErrorReply),
        (status = 404, body = ErrorReply), (status = 409, body = ErrorReply)))]
pub(crate) async fn create_backup(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<BackupBody>,
) -> Result<(StatusCode, Json<BackupRecord>), ApiError> {
    let deadline_secs = body
        .deadline
        .as_deref()
        .map(parse_interval)
        .transpose()?
        .map(|d| d.as_secs());
    let req = BackupRequest {
        target: body.target,
        deadline_secs,
    };
    let rec = blocking(&state, move |s| s.request_backup(&name, &req)).await?;
    Ok((StatusCode::ACCEPTED, Json(rec)))
}

/// Backup runs in flight or finished within the hour.
#[utoipa::path(get, path = "/v1/backup-runs", responses((status = 200, body = [BackupRecord])))]
pub(crate) async fn list_runs(
    State(state): State<ApiState>,
) -> Result<Json<Vec<BackupRecord>>, ApiError> {
    Ok(Json(blocking(&state, |s| s.backup_records()).await?))
}

#[utoipa::path(get, path = "/v1/backup-runs/{id}",
    responses((status = 200, body = BackupRecord), (status = 404, body = ErrorReply)))]
pub(crate) async fn get_run(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<BackupRecord>, ApiError> {
    Ok(Json(blocking(&state, move |s| s.backup_record(&id)).await?))
}

/// The backups the targets hold (a backup is listed once its manifest is
/// written), oldest first.
#[utoipa::path(get, path = "/v1/backups", params(BackupsQuery),
    responses((status = 200, body = [BackupInfo]), (status = 404, body = ErrorReply),
        (status = 503, body = ErrorReply)))]
pub(crate) async fn list_backups(
    State(state): State<ApiState>,
    q: QueryResult<BackupsQuery>,
) -> Result<Json<Vec<BackupInfo>>, ApiError> {
    let q = query(q)?;
    Ok(Json(
        blocking(&state, move |s| {
            s.list_backups(q.target.as_deref(), q.volume.as_deref())
        })
        .await?,
    ))
}

#[utoipa::path(get, path = "/v1/backups/{id}", params(TargetQuery),
    responses((status = 200, body = BackupInfo), (status = 404, body = ErrorReply)))]
pub(crate) async fn get_backup(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    q: QueryResult<TargetQuery>,
) -> Result<Json<BackupInfo>, ApiError> {
    let q = query(q)?;
    Ok(Json(
        blocking(&state, move |s| s.get_backup(&id, q.target.as_deref())).await?,
    ))
}

/// Delete a backup: its manifest, then the chunks no other backup uses.
#[utoipa::path(delete, path = "/v1/backups/{id}", params(TargetQuery),
    responses((status = 200, body = GcStats), (status = 404, body = ErrorReply)))]
pub(crate) async fn delete_backup(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    q: QueryResult<TargetQuery>,
) -> Result<Json<GcStats>, ApiError> {
    let q = query(q)?;
    Ok(Json(
        blocking(&state, move |s| s.delete_backup(&id, q.target.as_deref())).await?,
    ))
}

/// Make a new volume from a backup, every chunk checked against its hash.
/// A restore that fails leaves no volume.
#[utoipa::path(post, path = "/v1/backups/{id}/restore", request_body = RestoreBody,
    responses((status = 201, body = VolumeView), (status = 400, body = ErrorReply),
        (status = 404, body = ErrorReply), (status = 409, body = ErrorReply),
        (status = 500, description = "The backup is damaged", body = ErrorReply),
        (status = 507, body = ErrorReply)))]
pub(crate) async fn restore_backup(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RestoreBody>,
) -> Result<(StatusCode, Json<VolumeView>), ApiError> {
    for (what, v) in [
        ("node", &body.node),
        ("pool", &body.pool),
        ("backup target", &body.target),
    ] {
        if let Some(v) = v {
            validate_name(what, v)?;
        }
    }
    let req = RestoreRequest {
        to: body.to,
        target: body.target,
        node: body.node,
        pool: body.pool,
    };
    let vol = blocking(&state, move |s| s.restore_backup(&id, &req)).await?;
    Ok((StatusCode::CREATED, Json(VolumeView::new(vol, None))))
}

/// Back the volume up every `every`, keeping its newest `keep` scheduled
/// backups; the first run starts at once.
#[utoipa::path(put, path = "/v1/volumes/{name}/backup-schedule", request_body = ScheduleBody,
    responses((status = 200, body = BackupSchedule), (status = 400, body = ErrorReply),
        (status = 404, body = ErrorReply)))]
pub(crate) async fn set_schedule(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ScheduleBody>,
) -> Result<Json<BackupSchedule>, ApiError> {
    let every = parse_interval(&body.every)?;
    let deadline = body.deadline.as_deref().map(parse_interval).transpose()?;
    Ok(Json(
        blocking(&state, move |s| {
            s.set_backup_schedule(&name, body.target.as_deref(), every, body.keep, deadline)
        })
        .await?,
    ))
}

/// Stop the volume's scheduled backups (none is fine); its backups stay.
#[utoipa::path(delete, path = "/v1/volumes/{name}/backup-schedule",
    responses((status = 204, description = "Removed, or there was none"),
        (status = 404, description = "No such volume", body = ErrorReply)))]
pub(crate) async fn remove_schedule(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    blocking(&state, move |s| s.remove_backup_schedule(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/backup-schedules", responses((status = 200, body = [BackupSchedule])))]
pub(crate) async fn list_schedules(
    State(state): State<ApiState>,
) -> Result<Json<Vec<BackupSchedule>>, ApiError> {
    Ok(Json(blocking(&state, |s| s.list_backup_schedules()).await?))
}
