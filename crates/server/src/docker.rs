//! The Docker volume plugin protocol (legacy, unix socket), as dockerd
//! really calls it: moby's `daemon/volume/drivers/proxy.go` and `adapter.go`.
//!
//! Every endpoint is a POST with a JSON body (dockerd sends the content type
//! `application/vnd.docker.plugins.v1.2+json`, so the body is parsed
//! whatever the header says) and always answers with a JSON object; errors
//! travel in `Err`. Each handler is one `VolumeService` call. Mount IDs
//! become counted Docker consumers in the store; an empty ID is the one
//! anonymous consumer of callers older than Docker 1.12 (and dvdcli).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use ballast_core::desired::Placement;
use ballast_core::model::{
    format_size, parse_size, ConsumerKind, ConsumerRef, FsType, InvalidInput, Volume,
};
use ballast_core::{CreateVolume, Error, VolumeService, Wait};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::run_blocking;

const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// The largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// A plugin reply: a JSON object, with `Err` set on failure.
struct Reply {
    status: StatusCode,
    body: Value,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body,
        }
    }
    fn err(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::OK,
            body: json!({ "Err": message.into() }),
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        (
            self.status,
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            self.body.to_string(),
        )
            .into_response()
    }
}

/// The one mapping from the core's error to the plugin protocol: dockerd
/// shows `Err` to the user as it is, so the message must say it all.
fn docker_err(e: Error) -> Reply {
    let message = match &e {
        Error::InvalidArgument(_)
        | Error::NotFound { .. }
        | Error::AlreadyExists { .. }
        | Error::InUse { .. }
        | Error::Busy { .. }
        | Error::Capacity { .. }
        | Error::Conflict { .. }
        | Error::OtherNode { .. }
        | Error::Unavailable(_)
        | Error::NoSpace(_)
        | Error::Driver(_)
        | Error::Internal(_)
        | Error::Unplaceable { .. }
        | Error::Remote(_)
        | Error::Store(_) => e.to_string(),
    };
    Reply::err(message)
}

/// Request bodies. dockerd may add fields over time: unknown fields are
/// ignored here; unknown *options* are rejected by name.
#[derive(Debug, Default, Deserialize)]
struct PluginRequest {
    #[serde(rename = "Name")]
    name: Option<String>,
    #[serde(rename = "Opts")]
    opts: Option<BTreeMap<String, Value>>,
    #[serde(rename = "ID")]
    id: Option<String>,
}

fn parse_request(body: &Bytes) -> Result<PluginRequest, Reply> {
    if body.is_empty() {
        return Ok(PluginRequest::default());
    }
    serde_json::from_slice(body).map_err(|e| Reply::err(format!("malformed request body: {e}")))
}

fn require_name(req: &PluginRequest) -> Result<String, Reply> {
    match req.name.as_deref() {
        Some(n) if !n.is_empty() => Ok(n.to_string()),
        _ => Err(Reply::err("missing volume Name")),
    }
}

/// The plugin's `size` option: a bare number is GiB, as REX-Ray read it
/// (`-o size=5`); with a unit it is what the unit says (`-o size=64M`).
pub fn parse_docker_size(s: &str) -> Result<u64, InvalidInput> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return parse_size(&format!("{s}G"));
    }
    parse_size(s)
}

/// Translate `Opts` into a create request; unknown options are errors.
pub fn create_request(
    name: String,
    opts: &BTreeMap<String, Value>,
) -> Result<CreateVolume, InvalidInput> {
    let mut req = CreateVolume {
        name,
        ..CreateVolume::default()
    };
    for (k, v) in opts {
        let Some(v) = v.as_str() else {
            return Err(InvalidInput::new(
                format!("option {k:?}"),
                "must be a string",
            ));
        };
        match k.as_str() {
            "size" => req.size_bytes = Some(parse_docker_size(v)?),
            "fs" => req.fs = Some(v.parse::<FsType>()?),
            "pool" => req.pool = Some(v.to_string()),
            "autogrow" => req.autogrow = Some(ballast_core::model::parse_autogrow(v)?),
            other => {
                return Err(InvalidInput::new(
                    format!("option {other:?}"),
                    "is not known; ballast takes size, fs, pool and autogrow",
                ))
            }
        }
    }
    Ok(req)
}

#[derive(Debug, Serialize)]
struct DockerVolume {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Mountpoint", skip_serializing_if = "String::is_empty")]
    mountpoint: String,
    #[serde(rename = "CreatedAt", skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
    #[serde(rename = "Status", skip_serializing_if = "Option::is_none")]
    status: Option<Value>,
}

fn mountpoint_of(v: &Volume) -> String {
    v.mountpoint()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn full_volume(svc: &VolumeService, v: Volume) -> DockerVolume {
    let usage = svc.volume_usage(&v);
    let consumers: Vec<Value> = v
        .consumers
        .values()
        .map(|c| json!({"kind": c.kind.as_str(), "id": c.id, "count": c.count}))
        .collect();
    DockerVolume {
        name: v.name.clone(),
        mountpoint: mountpoint_of(&v),
        created_at: Some(
            v.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
        status: Some(json!({
            "size": format_size(v.size_bytes),
            "size_bytes": v.size_bytes,
            "pool": v.pool,
            "driver": v.driver.as_str(),
            "fs": v.fs.map(FsType::as_str),
            "used_bytes": usage.map(|u| u.used_bytes),
            "state": v.state.as_str(),
            "consumers": consumers,
        })),
    }
}

/// Shared state of the plugin handlers.
#[derive(Clone)]
pub struct PluginState {
    pub service: Arc<VolumeService>,
}

/// The plugin router.
pub fn router(state: PluginState) -> Router {
    Router::new()
        .route(
            "/Plugin.Activate",
            post(|| async { Reply::ok(json!({"Implements": ["VolumeDriver"]})) }),
        )
        .route("/VolumeDriver.Create", post(create))
        .route("/VolumeDriver.Remove", post(remove))
        .route("/VolumeDriver.Mount", post(mount))
        .route("/VolumeDriver.Unmount", post(unmount))
        .route("/VolumeDriver.Path", post(path))
        .route("/VolumeDriver.Get", post(get))
        .route("/VolumeDriver.List", post(list))
        .route("/VolumeDriver.Capabilities", post(capabilities))
        .fallback(|| async {
            Reply {
                status: StatusCode::NOT_FOUND,
                body: json!({"Err": "no such plugin endpoint"}),
            }
        })
        // axum's own 405 has an empty body; every reply here is JSON.
        .method_not_allowed_fallback(|| async {
            Reply {
                status: StatusCode::METHOD_NOT_ALLOWED,
                body: json!({"Err": "plugin endpoints take POST"}),
            }
        })
        .layer(axum::middleware::from_fn(limit_body))
        .with_state(state)
}

/// Bodies over [`MAX_BODY`] get an `Err` reply, like any other bad request.
async fn limit_body(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => {
            next.run(axum::extract::Request::from_parts(parts, bytes.into()))
                .await
        }
        Err(_) => Reply {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            body: json!({"Err": format!("request body is larger than {MAX_BODY} bytes")}),
        }
        .into_response(),
    }
}

async fn create(State(st): State<PluginState>, body: Bytes) -> Reply {
    let result = async {
        let req = parse_request(&body)?;
        let name = require_name(&req)?;
        let create = create_request(name, &req.opts.unwrap_or_default())
            .map_err(|e| docker_err(e.into()))?;
        // A Docker volume is used where it is made: on this node.
        run_blocking(&st.service, move |s| {
            let here = Placement::on(s.node_id());
            s.create_volume_placed(create, here, Wait::Block)
        })
        .await
        .map_err(docker_err)?;
        Ok::<_, Reply>(Reply::ok(json!({})))
    };
    result.await.unwrap_or_else(|r| r)
}

async fn remove(State(st): State<PluginState>, body: Bytes) -> Reply {
    let result = async {
        let name = require_name(&parse_request(&body)?)?;
        run_blocking(&st.service, move |s| {
            s.delete_volume_anywhere(&name, false, Wait::Block)
        })
        .await
        .map_err(docker_err)?;
        Ok::<_, Reply>(Reply::ok(json!({})))
    };
    result.await.unwrap_or_else(|r| r)
}

fn consumer(req: &PluginRequest) -> ConsumerRef {
    ConsumerRef::new(ConsumerKind::Docker, req.id.clone().unwrap_or_default())
}

async fn mount(State(st): State<PluginState>, body: Bytes) -> Reply {
    let result = async {
        let req = parse_request(&body)?;
        let name = require_name(&req)?;
        let c = consumer(&req);
        let v = run_blocking(&st.service, move |s| s.mount(&name, c))
            .await
            .map_err(docker_err)?;
        Ok::<_, Reply>(Reply::ok(json!({"Mountpoint": mountpoint_of(&v)})))
    };
    result.await.unwrap_or_else(|r| r)
}

async fn unmount(State(st): State<PluginState>, body: Bytes) -> Reply {
    let result = async {
        let req = parse_request(&body)?;
        let name = require_name(&req)?;
        let c = consumer(&req);
        run_blocking(&st.service, move |s| s.unmount(&name, &c))
            .await
            .map_err(docker_err)?;
        Ok::<_, Reply>(Reply::ok(json!({})))
    };
    result.await.unwrap_or_else(|r| r)
}

async fn path(State(st): State<PluginState>, body: Bytes) -> Reply {
    let result = async {
        let name = require_name(&parse_request(&body)?)?;
        let v = st.service.get_volume(&name).map_err(docker_err)?;
        Ok::<_, Reply>(Reply::ok(json!({"Mountpoint": mountpoint_of(&v)})))
    };
    result.await.unwrap_or_else(|r| r)
}

async fn get(State(st): State<PluginState>, body: Bytes) -> Reply {
    let result = async {
        let name = require_name(&parse_request(&body)?)?;
        // An unknown name must be an error: an empty Volume reads as "exists".
        let vol = run_blocking(&st.service, move |s| {
            let v = s.get_volume(&name)?;
            Ok(full_volume(s, v))
        })
        .await
        .map_err(docker_err)?;
        Ok::<_, Reply>(Reply::ok(json!({ "Volume": vol })))
    };
    result.await.unwrap_or_else(|r| r)
}

async fn list(State(st): State<PluginState>) -> Reply {
    // From the service's in-memory records: no backend call per volume.
    let vols: Vec<DockerVolume> = st
        .service
        .list_volumes()
        .into_iter()
        .map(|v| DockerVolume {
            mountpoint: mountpoint_of(&v),
            name: v.name,
            created_at: None,
            status: None,
        })
        .collect();
    Reply::ok(json!({ "Volumes": vols }))
}

/// `global` once the store has a shared (rbd) pool: its volumes are the
/// same on every host, so Docker (swarm) may treat a name as cluster-wide
/// (the Docker 1.12 scope). Otherwise a volume lives on one host: `local`.
async fn capabilities(State(state): State<PluginState>) -> Reply {
    let shared = state.service.list_pools().iter().any(|p| p.is_shared());
    let scope = if shared { "global" } else { "local" };
    Reply::ok(json!({"Capabilities": {"Scope": scope}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let mut o = BTreeMap::new();
        o.insert("size".to_string(), json!("64M"));
        o.insert("fs".to_string(), json!("xfs"));
        let r = create_request("v".into(), &o).unwrap();
        assert_eq!(r.size_bytes, Some(64 << 20));
        assert_eq!(r.fs, Some(FsType::Xfs));
        o.insert("sizee".to_string(), json!("1"));
        let e = create_request("v".into(), &o).unwrap_err();
        assert!(e.to_string().contains("sizee"), "{e}");
        assert_eq!(parse_docker_size("5").unwrap(), 5 << 30);
        assert!(parse_docker_size("1e3").is_err());
        let mut o = BTreeMap::new();
        o.insert("size".to_string(), json!(5));
        assert!(create_request("v".into(), &o).is_err());
    }
}
